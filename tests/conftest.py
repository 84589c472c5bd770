"""Shared fixtures: CPU shims for in-process tests, pools of gloo ranks reused across the session, and the
synthetic dataset with the overrides of a tiny trainer run on it; and how the suite is split between
pytest-xdist workers (`make test` runs two: most tests use one core, so two workers fill a 2-core machine)."""

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


# Test files that share an expensive session fixture (each xdist worker would build its own copy) run on one
# worker: {file: group}. Every other file is a group of its own (`pytest_collection_modifyitems`).
SHARED_SETUP_GROUPS = {
    "tests/export/test_parity.py": "tp2pp2_checkpoints",
    "tests/export/test_bad_input.py": "tp2pp2_checkpoints",
    "tests/export/test_eval.py": "tp2pp2_checkpoints",
}
# Started first, so that no long file is left to run alone at the end (about the slowest 5 files, in minutes
# under two workers). Only the order changes: any order passes.
LONG_FILES = (
    "tests/study/test_study_quick.py",
    "tests/launch/test_slurm.py",
    "tests/launch/test_torchrun.py",
    "tests/training/test_trainer_resume.py",
)


def pytest_collection_modifyitems(config, items):
    """Under `pytest -n N --dist loadgroup` a file's tests stay on one worker, so its module-scoped fixtures
    are built once; the long files go first. Without xdist the marks are inert."""
    order = {path: i for i, path in enumerate(LONG_FILES)}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(SHARED_SETUP_GROUPS.get(path, path)))
    rank = {id(item): order.get(item.nodeid.split("::", 1)[0], len(order)) for item in items}
    items.sort(key=lambda item: rank[id(item)])  # stable: each file's tests keep their order


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
