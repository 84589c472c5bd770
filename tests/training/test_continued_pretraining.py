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
    from vffn_pretrain.testing import RankPoolError

    with pytest.raises(RankPoolError, match="train.init_from`: .*nowhere: neither a checkpoint"):
        rank_pools(1).run(cases.train, [*overrides[:-3], f"run_dir={tmp_path / 'x'}",
                                        f"train.init_from={tmp_path / 'nowhere'}"])
