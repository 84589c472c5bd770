"""benchmarks/pipeline_measured.py keeps working (--quick: one prediction case and one planning round, with the
sharing calibration). Only the report's shape and its arithmetic are checked: timings are the script's business."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.faults.processes import run_in_session

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pipeline_measured.py"


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
