"""Save -> load -> continue equals uninterrupted training; checkpoints reshard across layouts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.parallel import layout_runs as cases


@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["plain_opt", "dist_opt"])
def test_resume_is_bitwise_and_the_checkpoint_reshards(rank_pools, tmp_path, distributed_optimizer):
    # Saved at TP=2 x PP=2 (DP=1); loaded at the same layout: the next losses are bitwise those of the
    # uninterrupted run; loaded at TP=1 x PP=2 x DP=2: the same up to fp32 reduction order.
    result = rank_pools(4).run(cases.resume_run, str(tmp_path), {"tp": 2, "pp": 2}, distributed_optimizer,
                               load_layouts=(None, {"pp": 2}))[0]
    assert result["steps"] == [2, 2]
    same_layout, resharded = result["resumed"]
    assert same_layout == result["uninterrupted"]
    np.testing.assert_allclose(resharded, result["uninterrupted"], rtol=1e-5)
