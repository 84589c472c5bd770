"""The real trainer at TP=2 x PP=2 and at DP=2 computes the single-rank losses (fp32, 1e-5 relative)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training import trainer_runs as cases


@pytest.fixture(scope="module")
def single_rank_losses(synthetic_data, tmp_path_factory):
    # A world of one in a pool of its own: the same code path as the parallel runs.
    tmp = tmp_path_factory.mktemp("single")
    return tmp


def _overrides(synthetic_data, tmp, name, *extra):
    return [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp / 'cache'}",
            f"run_dir={tmp / name}", "train.max_steps=3", "checkpoint.interval=1000", *extra]


@pytest.mark.parametrize("ffn", ["versatile", "dense"])
def test_tp2xpp2_and_dp2_match_single_rank(rank_pools, synthetic_data, tmp_path, ffn):
    single = rank_pools(1).run(cases.train, _overrides(synthetic_data, tmp_path, "single", f"ffn={ffn}"))[0]
    ref = [single["losses"][s] for s in (1, 2, 3)]
    tp_pp = rank_pools(4).run(cases.train, _overrides(synthetic_data, tmp_path, "tp2pp2", f"ffn={ffn}",
                                                       "parallel.tp=2", "parallel.pp=2"))[0]
    np.testing.assert_allclose([tp_pp["losses"][s] for s in (1, 2, 3)], ref, rtol=1e-5)
    dp2 = rank_pools(2).run(cases.train, _overrides(synthetic_data, tmp_path, "dp2", f"ffn={ffn}"))[0]
    np.testing.assert_allclose([dp2["losses"][s] for s in (1, 2, 3)], ref, rtol=1e-5)
