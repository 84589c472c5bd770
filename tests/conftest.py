"""Shared fixtures: CPU shims for in-process tests, pools of gloo ranks reused across the session, and the
synthetic dataset with the overrides of a tiny trainer run on it.

`make test` runs two pytest-xdist workers (most tests keep one core busy, so two fill a 2-core machine) with
`--dist loadscope` and the scopes of tests/scheduling.py: tests handed out one by one, except those that share
the SLURM cluster, the export checkpoints or a module-scoped fixture. Session fixtures (the rank pools) are built
once per worker."""

from __future__ import annotations

import os
import signal
import warnings

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

# A suite started in the background by a non-interactive shell (`nohup make test &`, some CI runners) inherits
# SIGINT ignored, and so would every program the tests start: the Ctrl-C tests would see their SIGINT dropped.
# A handled (not ignored) SIGINT here becomes the default disposition in every program the tests exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def rank_pools():
    """`rank_pools(n)` returns a pool of n gloo ranks, started on first use and shared by the whole session."""
    from vffn_pretrain.testing.rank_pool import RankPool

    pools: dict[int, RankPool] = {}

    def get(world_size: int) -> RankPool:
        pool = pools.get(world_size)
        if pool is None or pool.broken:
            pool = pools[world_size] = RankPool(world_size)
        return pool

    yield get
    for pool in pools.values():
        pool.close()


@pytest.fixture
def single_rank():
    """A world of one (gloo on a free loopback port) with megatron-core's parallel state set up at TP=PP=1."""
    from megatron.core import parallel_state as ps

    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import init_distributed, seed_all, setup_model_parallel

    init_distributed()
    setup_model_parallel(ParallelConfig())
    seed_all(1234)
    yield
    ps.destroy_model_parallel()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> str:
    from tests.training import trainer_runs

    return trainer_runs.make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def base_overrides(synthetic_data, tmp_path) -> list[str]:
    from tests.training import trainer_runs

    return [*trainer_runs.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={tmp_path / 'cache'}"]


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` (what `make test` uses) hands out the scopes of tests/scheduling.py."""
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.scheduling import OurScopes

    return OurScopes(config, log)
