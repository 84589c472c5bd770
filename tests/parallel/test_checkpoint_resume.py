"""Save -> load -> continue equals uninterrupted training; checkpoints reshard across layouts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.parallel import layout_runs as cases


@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["plain_opt", "dist_opt"])
def test_resume_is_bitwise(rank_pools, tmp_path, distributed_optimizer):
    result = rank_pools(4).run(cases.resume_run, str(tmp_path), {"tp": 2, "pp": 2}, distributed_optimizer)[0]
    assert result["step"] == 2
    assert result["resumed"] == result["uninterrupted"]


@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["plain_opt", "dist_opt"])
def test_checkpoint_reshards(rank_pools, tmp_path, distributed_optimizer):
    # Saved at TP=2 x PP=2 (DP=1), loaded at TP=1 x PP=2 x DP=2: same next losses up to fp32 reduction order.
    result = rank_pools(4).run(cases.resume_run, str(tmp_path), {"tp": 2, "pp": 2}, distributed_optimizer,
                               load_layout={"pp": 2})[0]
    np.testing.assert_allclose(result["resumed"], result["uninterrupted"], rtol=1e-5)
