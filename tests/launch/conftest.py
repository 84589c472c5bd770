"""Fixtures for the launcher tests: a synthetic dataset on the shared (here: local) filesystem, the tiny run's
overrides, and the SLURM gate.

Tests marked ``slurm`` need a cluster with two idle nodes (`.ci/slurm_up.sh` starts one on localhost). Without
one they are skipped, and the reason is printed at the end of the session even without ``-rs``. Setting
VFFN_REQUIRE_SLURM=1 (CI) turns that skip into a failure, so a CI machine whose cluster did not come up
cannot pass by skipping.
"""

from __future__ import annotations

import os

import pytest

from tests.launch import launcher_runs as helpers
from tests.training import trainer_runs as cases

_slurm_state: dict[str, str | None] = {}


def require_slurm() -> None:
    """Skip (or, with VFFN_REQUIRE_SLURM=1, fail) unless a cluster with 2 idle nodes answers. Checked once."""
    if "reason" not in _slurm_state:
        _slurm_state["reason"] = helpers.slurm_unavailable()
    reason = _slurm_state["reason"]
    if reason is None:
        return
    if os.environ.get("VFFN_REQUIRE_SLURM") == "1":
        pytest.fail(f"VFFN_REQUIRE_SLURM=1 but SLURM is unavailable: {reason}")
    pytest.skip(f"needs SLURM: {reason}")


@pytest.fixture(autouse=True)
def _slurm_gate(request):
    # Module-scoped fixtures that submit jobs call require_slurm() themselves: they are set up first.
    if request.node.get_closest_marker("slurm") is not None:
        require_slurm()


def pytest_terminal_summary(terminalreporter):
    if _slurm_state.get("reason"):
        terminalreporter.write_line(f"SLURM tests not run: {_slurm_state['reason']}", yellow=True)


@pytest.fixture(scope="session")
def launch_data(tmp_path_factory) -> str:
    """A synthetic indexed dataset under /tmp, which every local "node" sees."""
    return cases.make_dataset(tmp_path_factory.mktemp("launch-data"))


@pytest.fixture
def tiny(launch_data, tmp_path) -> list[str]:
    """Overrides of a tiny run on the synthetic data (add run_dir and train.max_steps)."""
    return [*cases.BASE, f"data.paths={launch_data}", f"data.cache_dir={tmp_path / 'cache'}",
            "checkpoint.interval=1000"]
