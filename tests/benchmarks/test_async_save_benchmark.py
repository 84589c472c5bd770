"""benchmarks/async_save.py keeps working (--quick: the tiny model, one round of each kind of save). Only the
report's shape and its arithmetic are checked: timings are the script's business."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.processes import run_in_session

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "async_save.py"


def test_quick_run_reports_both_kinds_of_save(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = run_in_session([sys.executable, str(SCRIPT), "--quick", "--json", "--workdir", str(tmp_path)],
                          timeout=900, env={**env, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["load_before"].startswith("load average")
    (tiny,) = report["results"]
    assert tiny["model"] == "tiny" and tiny["rounds"] == 1 and tiny["checkpoint_gb"] > 0
    sync, background = tiny["sync"], tiny["async"]
    assert sync["write_s"] is None and sync["overlap_steps"] == 0 and sync["lost_s"] == sync["blocking_s"]
    assert background["write_s"] > 0 and background["blocking_s"] > 0
    assert tiny["blocking_ratio"] == pytest.approx(background["blocking_s"] / sync["blocking_s"])
    assert list(tmp_path.iterdir()) == []  # its checkpoints are removed


@pytest.mark.parametrize("args, key", [(["--rounds", "0"], "--rounds"), (["--threads", "-1"], "--threads")])
def test_a_bad_option_is_one_line_and_exit_2(args, key):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith(f"async_save: {key} "), proc.stderr
