"""parallel.init_timeout_s bounds the start-up only (joining the world, the pre-flight check); the run's later
collectives wait up to parallel.collective_timeout_min, e.g. while rank 0 alone builds the dataset indices."""

from __future__ import annotations

import time

from tests.training import trainer_runs as cases
from vffn_pretrain.testing.rank_pool import RankPool


def start_with_slow_rank0_data(overrides: list[str], delay_s: float) -> int:
    """Train while rank 0 takes `delay_s` longer to build the data: the other rank waits in its broadcast."""
    from vffn_pretrain.training.trainer import Trainer

    original = Trainer._build_data

    def slow(self):
        if self.rank == 0:
            time.sleep(delay_s)
        original(self)

    Trainer._build_data = slow
    try:
        return cases.train(overrides)["exit_code"]
    finally:
        Trainer._build_data = original


def preflight_without_rank_1(timeout_s: float):
    import torch.distributed as dist

    from vffn_pretrain.parallel.preflight import PreflightError, preflight

    if dist.get_rank() == 1:
        return None
    start = time.monotonic()
    try:
        preflight(timeout_s)
    except PreflightError as e:
        return str(e), time.monotonic() - start
    return "no error", time.monotonic() - start


def test_start_up_timeout_does_not_bound_the_run(base_overrides, tmp_path):
    init_timeout = 3
    pool = RankPool(2, env={"VFFN_TEST_DIST_TIMEOUT": str(init_timeout)})  # the world joined with init_timeout_s
    try:
        args = [*base_overrides, f"run_dir={tmp_path / 'run'}", "train.max_steps=1",
                f"parallel.init_timeout_s={init_timeout}", "parallel.collective_timeout_min=0.5"]
        assert pool.run(start_with_slow_rank0_data, args, 3 * init_timeout) == [0, 0]
        # The pre-flight check itself stays bounded by init_timeout_s (it waits for a rank that never comes).
        message, waited = pool.run(preflight_without_rank_1, init_timeout)[0]
        assert message.startswith("pre-flight: rank 0 on ") and f"waited {init_timeout} s" in message, message
        assert init_timeout - 0.5 <= waited < init_timeout + 10
    finally:
        pool.close(force=True)
