"""The scopes `make test` hands to its pytest-xdist workers (tests/scheduling.py)."""

from __future__ import annotations

from pathlib import Path

from tests.scheduling import KEEP_TOGETHER, scope_of

ROOT = str(Path(__file__).resolve().parents[1])


def test_tests_sharing_the_slurm_cluster_or_the_export_checkpoints_stay_together():
    assert "tests/launch/test_slurm.py" in KEEP_TOGETHER
    slurm = {scope_of(f"tests/launch/test_slurm.py::{name}", ROOT) for name in ("test_a", "test_b[x-y]")}
    assert slurm == {"tests/launch/test_slurm.py"}
    export = {scope_of(nodeid, ROOT) for nodeid in ("tests/export/test_parity.py::test_a",
                                                     "tests/export/test_bad_input.py::test_b")}
    assert export == {"tests/export/"}


def test_a_file_with_a_module_scoped_fixture_is_one_scope_and_other_tests_are_their_own():
    # test_study_quick.py builds the quick study once in a module-scoped fixture.
    assert "scope=\"module\"" in (Path(ROOT) / "tests/study/test_study_quick.py").read_text()
    assert scope_of("tests/study/test_study_quick.py::test_a", ROOT) == "tests/study/test_study_quick.py"
    # test_trainer_resume.py has function-scoped fixtures only: each test is handed out alone.
    assert "scope=" not in (Path(ROOT) / "tests/training/test_trainer_resume.py").read_text()
    nodeid = "tests/training/test_trainer_resume.py::test_kill_9_then_same_command_resumes"
    assert scope_of(nodeid, ROOT) == nodeid


def test_a_parametrized_id_with_slashes_or_colons_keeps_its_file():
    nodeid = "tests/planning/test_megatron_schedules.py::test_x[7b/mixed/p4/v1/m8]"
    assert scope_of(nodeid, ROOT) == "tests/planning/test_megatron_schedules.py"  # module-scoped `hops`
