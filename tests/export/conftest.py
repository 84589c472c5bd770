from __future__ import annotations

import pytest

from tests.export import export_runs as cases
from tests.training import trainer_runs as training_cases

KINDS = ("dense", "versatile", "kloop", "moe")


@pytest.fixture(scope="session")
def tp2pp2_checkpoints(rank_pools, tmp_path_factory) -> dict[str, str]:
    """One tiny checkpoint per FFN kind, trained 2 steps and saved at TP = 2 x PP = 2 (moe: with SP, which
    megatron's MoE layer needs under TP). Returns {kind: checkpoint.dir}."""
    tmp = tmp_path_factory.mktemp("tp2pp2")
    prefix = training_cases.make_dataset(tmp, num_docs=100)
    out = {}
    for kind in KINDS:
        extra = ["parallel.tp=2", "parallel.pp=2", "train.max_steps=2", "train.eval_iters=0"]
        if kind == "moe":
            extra.append("parallel.sp=true")
        result = rank_pools(4).run(training_cases.train, cases.tiny_overrides(prefix, tmp, kind, *extra))[0]
        assert result["exit_code"] == 0
        out[kind] = str(tmp / kind / "checkpoints")
    return out
