"""launch/record_exit.py: a worker's exit code is recorded for launch/torchrun.sh, and passed on as it is even
when the launcher is gone and its directory with it (the worker saved after the launcher died)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECORD_EXIT = Path(__file__).resolve().parents[2] / "launch" / "record_exit.py"


@pytest.mark.parametrize("exit_dir_exists", [True, False], ids=["recorded", "launcher-gone"])
def test_the_exit_code_is_recorded_and_passed_on(exit_dir_exists, tmp_path):
    (tmp_path / "requeue_me.py").write_text("import sys\nsys.exit(3)\n")
    exit_dir = tmp_path / "exits"
    if exit_dir_exists:
        exit_dir.mkdir()
    env = {**os.environ, "VFFN_EXIT_DIR": str(exit_dir), "RANK": "5",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(RECORD_EXIT.parents[1])])}
    done = subprocess.run([sys.executable, str(RECORD_EXIT), "requeue_me"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3 and done.stderr == "", done.stderr
    if exit_dir_exists:
        assert (exit_dir / "rank-5").read_text() == "3\n" and (exit_dir / "started-5").exists()
    else:
        assert not exit_dir.exists()
