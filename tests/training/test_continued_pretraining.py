"""train.init_from: a dense checkpoint converted into VersatileFFN / k-loop / MoE."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training import trainer_runs as cases


@pytest.fixture(scope="module")
def dense_checkpoint(rank_pools, synthetic_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense")
    overrides = [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp / 'cache'}",
                 f"run_dir={tmp / 'dense'}", "ffn=dense", "train.max_steps=3"]
    result = rank_pools(1).run(cases.train, overrides)[0]
    assert result["exit_code"] == 0
    return overrides, str(tmp / "dense" / "checkpoints")


@pytest.mark.parametrize("kind", ["versatile", "depth_only", "width_only"])
def test_converted_model_with_one_loop_and_no_width_reproduces_dense_logits(rank_pools, dense_checkpoint, kind,
                                                                           tmp_path):
    overrides, ckpt = dense_checkpoint
    overrides = [*overrides[:-3], f"run_dir={tmp_path / 'conv'}"]
    out = rank_pools(1).run(cases.converted_logits, overrides, ckpt, kind)[0]
    assert np.abs(out["dense"]).max() > 0
    np.testing.assert_allclose(out[kind], out["dense"], rtol=1e-5, atol=1e-5)


def test_converted_run_trains_from_the_dense_weights(rank_pools, dense_checkpoint, tmp_path):
    overrides, ckpt = dense_checkpoint
    base = [*overrides[:-3], "train.max_steps=2"]
    fresh = rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'fresh'}", "ffn=versatile"])[0]
    conv = rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'conv'}", "ffn=versatile",
                                           f"train.init_from={ckpt}"])[0]
    # The dense model already learned something: starting from it beats a fresh initialisation.
    assert conv["losses"][1] < fresh["losses"][1]
    assert conv["summary"]["steps"] == 2  # optimizer and schedule start anew


def test_init_from_missing_directory_is_a_clear_error(rank_pools, dense_checkpoint, tmp_path):
    overrides, _ = dense_checkpoint
    from vffn_pretrain.testing.rank_pool import RankPoolError

    with pytest.raises(RankPoolError, match="train.init_from`: .*nowhere: neither a checkpoint"):
        rank_pools(1).run(cases.train, [*overrides[:-3], f"run_dir={tmp_path / 'x'}",
                                        f"train.init_from={tmp_path / 'nowhere'}"])


def _val_records(run_dir) -> dict[int, float]:
    import json
    from pathlib import Path

    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r}


def test_eval_at_start_records_the_converted_models_starting_loss_and_changes_no_step(rank_pools, dense_checkpoint,
                                                                                     tmp_path):
    overrides, ckpt = dense_checkpoint
    base = [*overrides[:-3], "train.max_steps=2", "ffn=versatile", f"train.init_from={ckpt}"]
    plain = rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'plain'}"])[0]
    start = rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'start'}", "train.eval_at_start=true"])[0]
    assert sorted(_val_records(tmp_path / "start")) == [0, 2]
    assert sorted(_val_records(tmp_path / "plain")) == [2]
    # The evaluation draws no random numbers and leaves the model in training mode: every step is the same.
    assert start["losses"] == plain["losses"]
    assert _val_records(tmp_path / "start")[2] == _val_records(tmp_path / "plain")[2]
    # The converted model starts near the dense model's loss, above what two more steps reach.
    assert _val_records(tmp_path / "start")[0] > _val_records(tmp_path / "start")[2]


def _blend_records(run_dir) -> dict[int, float]:
    import json
    from pathlib import Path

    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["blend"] for r in map(json.loads, lines) if r.get("blend") is not None}


@pytest.mark.parametrize("kind", ["versatile", "kloop"])
def test_blend_in_starts_at_the_dense_loss(rank_pools, dense_checkpoint, kind, tmp_path):
    """ffn.blend_in_steps: the step-0 evaluation of the converted model is the dense model's (the trainer sets
    the blend weight of step 0 before it evaluates)."""
    overrides, ckpt = dense_checkpoint
    base = [*overrides[:-3], "train.max_steps=1", "train.eval_at_start=true", f"train.init_from={ckpt}"]
    rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'dense'}", "ffn=dense"])
    rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'blend'}", f"ffn={kind}", "ffn.blend_in_steps=5"])
    rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'shock'}", f"ffn={kind}"])
    dense = _val_records(tmp_path / "dense")[0]
    assert abs(_val_records(tmp_path / "blend")[0] - dense) < 1e-5
    assert abs(_val_records(tmp_path / "shock")[0] - dense) > 1e-3


def test_blend_in_follows_the_step_across_a_resume(rank_pools, dense_checkpoint, tmp_path):
    overrides, ckpt = dense_checkpoint
    base = [*overrides[:-3], "train.max_steps=6", "ffn=depth_only", "ffn.blend_in_steps=4",
            f"train.init_from={ckpt}"]
    straight = rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'a'}"])[0]
    first = rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'b'}", "train.exit_interval=3"])[0]
    assert first["exit_code"] == 0 and sorted(first["losses"]) == [1, 2, 3]
    resumed = rank_pools(1).run(cases.train, [*base, f"run_dir={tmp_path / 'b'}"])[0]
    # The weight of each step is step / 4 (logged after the step), in the resumed process as in the first.
    assert _blend_records(tmp_path / "b") == {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1.0, 6: 1.0}
    assert resumed["losses"] == straight["losses"]  # bit for bit, the ramp included
