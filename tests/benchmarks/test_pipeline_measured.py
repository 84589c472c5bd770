"""benchmarks/pipeline_measured.py keeps working (--quick: one prediction case and one planning round, with the
sharing calibration). Only the report's shape and its arithmetic are checked: timings are the script's business."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.processes import children, run_in_session, wait_until_gone
from tests.faults.test_processes import GONE_WITHIN_S

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pipeline_measured.py"


@pytest.mark.slow
def test_quick_run_reports_a_prediction_and_a_planning_round():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = run_in_session([sys.executable, str(SCRIPT), "--quick", "--json"], timeout=900,
                          env={**env, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    (row,) = report["prediction"]["rows"]
    assert report["prediction"]["shared_slowdown"]["1"] == 1.0 and report["prediction"]["shared_slowdown"]["2"] >= 1
    assert (row["pp"], row["layout"]) == (2, "Etttt|ttttL")
    assert row["predicted_s"] > 0 and row["measured_s"] > 0
    assert row["error"] == pytest.approx(row["predicted_s"] / row["measured_s"] - 1)
    assert 0 <= row["rounds"][0]["host_drift"] < float("inf")
    plan = report["planning"]
    (first,) = plan["rounds"]
    assert first["speedup"] == pytest.approx(first["even"] / first["planned"])
    assert plan["even_layout"] == "Etttt|ttttL" and plan["planned_layout"].count("t") == 8


@pytest.mark.parametrize("args, key", [(["--steps", "1"], "--steps"), (["--warmup", "-1"], "--warmup"),
                                       (["--prediction-rounds", "0"], "--prediction-rounds"),
                                       (["--calib-rounds", "0"], "--calib-rounds"), (["--rounds", "-3"], "--rounds"),
                                       (["--sharing-seconds", "inf"], "--sharing-seconds"),
                                       (["--sharing-seconds", "nan"], "--sharing-seconds")])
def test_an_option_no_study_can_run_with_is_one_line_and_exit_2(args, key):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith(f"pipeline_measured: {key} "), proc.stderr


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_process():
    runner = subprocess.Popen([sys.executable, str(SCRIPT), "--quick"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 120
    while not children(runner.pid):  # inside its first vffn-plan calibrate
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
        time.sleep(0.1)
    os.killpg(runner.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = runner.communicate(timeout=120)
    survivors = wait_until_gone(runner.pid, GONE_WITHIN_S)
    if survivors:
        os.killpg(runner.pid, signal.SIGKILL)
    assert not survivors, survivors
    assert runner.returncode == 130 and out == ""
    assert err.strip() == "pipeline_measured: interrupted; no report", err
