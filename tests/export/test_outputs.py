"""vffn-export and vffn-eval against a hostile user (issue 23, classes 2, 3, 7 and 9).

Catalogue rows (each a test below):

| class | case | what the user sees |
|---|---|---|
| 9 | export of a mixed model (ffn.layers = dense, kloop, versatile, width_only, depth_only) | VffnForCausalLM with megatron's logits |
| 9 | export (and generate) after the training tokenizer moved | exit 2 naming it, with the --tokenizer hint; with --tokenizer: done |
| 9 | export --tokenizer with more ids than the model | exit 2, "not the tokenizer it was trained with" |
| 2 | export --out = the run directory / inside the checkpoint dir, --overwrite | exit 2, "contains" / "lies inside"; checkpoints intact |
| 2 | export --overwrite onto a directory that is not a model | exit 2, "is not a model directory"; files intact |
| 2 | export under umask 002; a killed export's partial | 0o775 directory, 0o664 files; the partial is removed |
| 3 | export to an --out another live process is writing | exit 1, "is in use by PID" |
| 9 | eval --limit 0/-1/nan/inf/2.5, --batch-size 0, --device gpu/cuda:7 | exit 2 before loading anything |
| 2 | eval --out = the --hf dir / inside it / a directory / a foreign file | exit 2 before loading anything |
| 7 | eval --hf with a damaged config.json | exit 2 naming the file |
| 9 | eval --include-path with the user's own task; --out cannot be written at the end | scores computed; exit 1 naming the file the results went to |
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.export import export_runs as cases
from tests.training import trainer_runs as training_cases

PATTERN = "dense,kloop,versatile,width_only,depth_only"


@pytest.fixture(scope="module")
def mixed_run(rank_pools, tmp_path_factory) -> Path:
    """A tiny 5-layer mixed model trained 2 steps with a tokenizer file of its own (tok/tokenizer.json)."""
    from vffn_pretrain.data.assets import BUNDLED_TOKENIZER

    tmp = tmp_path_factory.mktemp("mixed")
    (tmp / "tok").mkdir()
    shutil.copy(BUNDLED_TOKENIZER, tmp / "tok" / "tokenizer.json")
    prefix = training_cases.make_dataset(tmp, num_docs=60)
    overrides = [*cases.tiny_overrides(prefix, tmp, "versatile", "train.max_steps=2", "train.eval_iters=0",
                                       "model.num_layers=5", f"ffn.layers='{PATTERN}'", "ffn.loops=2",
                                       "ffn.max_loops=3"),
                 f"data.tokenizer={tmp / 'tok' / 'tokenizer.json'}"]
    result = rank_pools(1).run(training_cases.train, overrides)[0]
    assert result["exit_code"] == 0
    return tmp / "versatile"


def _export(rank_pools, *argv, umask=None) -> dict:
    return rank_pools(1).run(cases.run_cli, "vffn_pretrain.export.cli", [str(a) for a in argv], umask)[0]


def _one_line(result: dict) -> str:
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"]
    return lines[0]


def test_a_mixed_model_exports_with_each_layers_kind(rank_pools, mixed_run, tmp_path):
    out = rank_pools(1).run(cases.export_and_compare, str(mixed_run / "checkpoints"), str(tmp_path / "hf"))[0]
    assert out["class"] == "VffnForCausalLM"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["layer_kinds"] == PATTERN.split(",") and config["loops"] == 2 and config["max_loops"] == 3
    ref, got = out["megatron"], out["hf"]
    assert ref.shape == got.shape and np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_a_moved_tokenizer_is_named_and_taken_from_tokenizer_flag(rank_pools, mixed_run, tmp_path):
    tok = mixed_run.parent / "tok" / "tokenizer.json"
    moved = tmp_path / "moved.json"
    ckpt = mixed_run / "checkpoints"
    shutil.move(tok, moved)
    try:
        result = _export(rank_pools, "--checkpoint", ckpt, "--out", tmp_path / "hf")
        assert result["code"] == 2
        line = _one_line(result)
        assert f"data.tokenizer={tok}" in line and "pass --tokenizer PATH" in line
        result = _export(rank_pools, "--checkpoint", ckpt, "--out", tmp_path / "hf", "--tokenizer", "null:100000")
        assert result["code"] == 2 and "not the tokenizer it was trained with" in _one_line(result)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["moved.json"]
        result = _export(rank_pools, "--checkpoint", ckpt, "--out", tmp_path / "hf", "--tokenizer", moved)
        assert result["code"] == 0, result["stderr"]
        shipped = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
        assert shipped["model"] == json.loads(moved.read_text())["model"]
        generate = ["--checkpoint", str(ckpt), "--prompt", "The hacker", "--max-new-tokens", "3"]
        result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.generate", generate)[0]
        assert result["code"] == 2 and "pass --tokenizer PATH" in _one_line(result)
        result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.generate", [*generate, "--tokenizer", str(moved)])[0]
        assert result["code"] == 0, result["stderr"]
    finally:
        shutil.move(moved, tok)


def test_export_never_writes_over_the_run_or_a_foreign_directory(rank_pools, mixed_run, tmp_path):
    ckpt = mixed_run / "checkpoints"
    before = sorted(str(p.relative_to(mixed_run)) for p in mixed_run.rglob("*"))
    for out, how in ((mixed_run, "contains"), (ckpt / "hf", "lies inside")):
        result = _export(rank_pools, "--checkpoint", ckpt, "--out", out, "--overwrite")
        assert result["code"] == 2
        assert f"--out {out} {how} --checkpoint {ckpt}" in _one_line(result)
    assert sorted(str(p.relative_to(mixed_run)) for p in mixed_run.rglob("*")) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    result = _export(rank_pools, "--checkpoint", ckpt, "--out", mine, "--overwrite")
    assert result["code"] == 2 and "is not a model directory" in _one_line(result)
    assert (mine / "thesis.tex").read_text() == "x"


def test_export_umask_stale_partial_and_a_second_writer(rank_pools, mixed_run, tmp_path):
    ckpt = mixed_run / "checkpoints"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "busy.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        result = _export(rank_pools, "--checkpoint", ckpt, "--out", tmp_path / "busy")
        assert result["code"] == 1 and f"is in use by PID {holder.pid} on this host" in _one_line(result)
    finally:
        holder.kill()
        holder.wait()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"hf.partial-{dead.pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_text("half")
    result = _export(rank_pools, "--checkpoint", ckpt, "--out", tmp_path / "hf", umask=0o002)
    assert result["code"] == 0, result["stderr"]
    assert f"removed {stale}" in result["stderr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.lock", "hf"]
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o775
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()} == {0o664}


# ------------------------------------------------------------------------------------------------ vffn-eval
def _eval(argv, capsys) -> tuple[int, str]:
    from vffn_pretrain.evaluation import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return exit_info.value.code, lines[0]


@pytest.mark.parametrize("option, value, named", [
    ("--limit", "0", "--limit"), ("--limit", "-1", "--limit"), ("--limit", "nan", "--limit"),
    ("--limit", "inf", "--limit"), ("--limit", "2.5", "--limit"), ("--batch-size", "0", "--batch-size"),
    ("--batch-size", "-3", "--batch-size"), ("--device", "gpu", "--device"), ("--device", "cuda:7", "--device"),
])
def test_eval_options_are_checked_before_anything_is_loaded(option, value, named, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    code, line = _eval(["--hf", tmp_path, "--tasks", "jargon_cloze", option, value], capsys)
    assert code == 2 and line.startswith(f"vffn-eval: {named}")


def test_eval_out_and_model_dir_are_checked_before_anything_is_loaded(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    base = ["--hf", hf, "--tasks", "jargon_cloze", "--out"]
    for out, words in ((hf, f"--out {hf} is --hf {hf}"), (hf / "eval.json", "lies inside --hf"),
                       (tmp_path, "contains --hf"), (tmp_path / "notes.json", "is not a vffn-eval result")):
        code, line = _eval([*base, out], capsys)
        assert code == 2 and words in line, line
    (hf / "config.json").write_text('{"model_type": ')
    code, line = _eval(["--hf", hf, "--tasks", "jargon_cloze"], capsys)
    assert code == 2 and f"{hf / 'config.json'}: not readable as JSON" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes.json"]  # no lock, no result


def test_eval_runs_the_users_own_task_and_keeps_results_it_cannot_write(rank_pools, mixed_run, tmp_path):
    from vffn_pretrain.evaluation.cli import TASKS_DIR

    mine = tmp_path / "tasks"
    mine.mkdir()
    for name in ("jargon_cloze.py", "jargon_cloze.jsonl"):
        shutil.copy(TASKS_DIR / name, mine / name)
    (mine / "my_cloze.yaml").write_text((TASKS_DIR / "jargon_cloze.yaml").read_text().replace(
        "task: jargon_cloze", "task: my_cloze"))
    out = tmp_path / "results" / "eval.json"
    result = rank_pools(1).run(cases.eval_with_a_full_disk, [
        "--checkpoint", str(mixed_run / "checkpoints"), "--tasks", "my_cloze", "--include-path", str(mine),
        "--limit", "4", "--batch-size", "2", "--out", str(out)])[0]
    assert result["code"] == 1, result["stderr"][-3000:]
    line = result["stderr"].strip().splitlines()[-1]
    assert f"cannot write --out {out} (No space left on device); the results were written to " in line
    saved = Path(line.rsplit(" written to ", 1)[1].removesuffix(" instead"))
    try:
        results = json.loads(saved.read_text())
    finally:
        saved.unlink()
    assert results["n-samples"]["my_cloze"]["effective"] == 4
    assert not out.exists() and not list(out.parent.iterdir())  # no partial, no lock
