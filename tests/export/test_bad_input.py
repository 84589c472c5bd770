"""vffn-export and vffn-eval on bad input: one line naming the problem, the documented exit code, and nothing
(half) written at the output path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.export import export_runs as cases


def _one_line(result: dict) -> str:
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"]
    return lines[0]


def test_export_of_a_missing_checkpoint(rank_pools, tmp_path):
    out = tmp_path / "hf"
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli",
                               ["--checkpoint", str(tmp_path / "nowhere"), "--out", str(out)])[0]
    assert result["code"] == 2
    assert "nowhere" in _one_line(result)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_of_an_incomplete_checkpoint_leaves_nothing(rank_pools, tp2pp2_checkpoints, tmp_path):
    step = sorted(p for p in Path(tp2pp2_checkpoints["dense"]).iterdir() if p.name.startswith("step_"))[-1]
    broken = tmp_path / "broken" / step.name
    shutil.copytree(step, broken)
    for shard in broken.glob("*.distcp"):  # the tensor data; metadata.json stays
        shard.unlink()
    out = tmp_path / "hf"
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli",
                               ["--checkpoint", str(broken), "--out", str(out)])[0]
    assert result["code"] == 2
    assert f"{broken}: no checkpoint could be loaded ({step.name}: " in _one_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no output, no staging directory


@pytest.mark.parametrize("damage", ["metadata", "shards"])
def test_export_falls_back_past_a_damaged_newest_checkpoint(damage, rank_pools, tp2pp2_checkpoints, tmp_path):
    """A checkpoint.dir whose newest checkpoint is damaged exports the previous one, as the trainer resumes and
    vffn-generate samples: one line says which failed and why, a damaged JSON file named by its path."""
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(tp2pp2_checkpoints["dense"], checkpoints)
    newest = checkpoints / "step_0000099"
    shutil.copytree(sorted(checkpoints.glob("step_*"))[-1], newest)
    if damage == "metadata":
        (newest / "metadata.json").write_text("garbage")
    else:
        for shard in newest.glob("*.distcp"):
            shard.write_bytes(shard.read_bytes()[:100])
    out = tmp_path / "hf"
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli",
                               ["--checkpoint", str(checkpoints), "--out", str(out)])[0]
    assert result["code"] == 0, result["stderr"]
    assert "Traceback" not in result["stderr"]
    [line] = [line for line in result["stderr"].splitlines() if "failed to load" in line]
    assert line.startswith(f"vffn-export: checkpoint {newest} failed to load (") and \
        line.endswith("; trying the previous one"), line
    if damage == "metadata":
        assert f"({newest / 'metadata.json'}: JSONDecodeError: " in line
    assert (out / "model.safetensors").is_file()


def test_export_refuses_an_existing_output_unless_overwrite(rank_pools, tp2pp2_checkpoints, tmp_path):
    out = tmp_path / "hf"
    args = ["--checkpoint", tp2pp2_checkpoints["kloop"], "--out", str(out)]
    assert rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli", args)[0]["code"] == 0
    (out / "keep.txt").write_text("mine")  # an earlier export, with a file of the user's added
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli", args)[0]
    assert result["code"] == 2 and "--overwrite" in _one_line(result)
    assert (out / "keep.txt").read_text() == "mine"
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli", [*args, "--overwrite"])[0]
    assert result["code"] == 0, result["stderr"]
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_eval_unknown_task(rank_pools, tmp_path):
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.evaluation.cli",
                               ["--hf", str(tmp_path), "--tasks", "jargon_cloze,no_such_task"])[0]
    assert result["code"] == 2
    # the model directory is checked first: give it a config so the task names are what fails
    (tmp_path / "config.json").write_text("{}")
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.evaluation.cli",
                               ["--hf", str(tmp_path), "--tasks", "jargon_cloze,no_such_task"])[0]
    assert result["code"] == 2 and "no_such_task" in _one_line(result)


@pytest.mark.timeout(120)
def test_eval_of_a_download_task_without_network_fails_fast(monkeypatch, capsys, tmp_path):
    from vffn_pretrain.evaluation import cli

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the hub is unreachable
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--hf", str(tmp_path), "--tasks", "paper"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "piqa" in lines[0] and "cannot be reached" in lines[0]


def _blend_of_loaded(checkpoint: str) -> list[float]:
    from megatron.core import parallel_state as ps

    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.training.inference_loading import load_checkpoint_for_inference

    loaded = load_checkpoint_for_inference(checkpoint)
    blends = [m.blend for m in ffn_state.ffn_modules(loaded.model)]
    ps.destroy_model_parallel()
    return blends


def test_a_checkpoint_inside_the_blend_in_ramp_loads_at_its_step_and_is_not_exported(rank_pools, tmp_path):
    """ffn.blend_in_steps (docs/method.md §15): inference tools compute the blend of the checkpoint's step; the
    exported model has no blend, so a checkpoint saved inside the ramp is refused in one line."""
    from tests.training import trainer_runs as training_cases

    prefix = training_cases.make_dataset(tmp_path, num_docs=100)
    overrides = cases.tiny_overrides(prefix, tmp_path, "kloop", "train.max_steps=2", "train.eval_iters=0",
                                     "ffn.blend_in_steps=5")
    assert rank_pools(1).run(training_cases.train, overrides)[0]["exit_code"] == 0
    checkpoint = str(tmp_path / "kloop" / "checkpoints")
    blends = rank_pools(1).run(_blend_of_loaded, checkpoint)[0]
    assert blends and set(blends) == {0.4}  # step 2 of 5, every layer
    out = tmp_path / "hf"
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli",
                               ["--checkpoint", checkpoint, "--out", str(out)])[0]
    assert result["code"] == 2
    assert "inside its ffn.blend_in_steps=5 ramp" in _one_line(result)
    assert not out.exists()
