"""benchmarks/gpu_check.py keeps working on CPU (--quick), and a step that fails or runs out of time is reported
as such while the steps after it still run and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
STEPS = ["environment", "correctness", "layer_speed", "throughput", "resume"]


def run_check(out: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *args], capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), timeout=900)
    report = json.loads((out / "gpu_check.json").read_text())
    return proc, report


@pytest.mark.slow
def test_quick_run_passes_every_step_and_writes_both_reports(tmp_path):
    proc, report = run_check(tmp_path, "--json")
    assert list(report["steps"]) == STEPS
    assert {name: r["status"] for name, r in report["steps"].items()} == dict.fromkeys(STEPS, "ok"), proc.stderr
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == report  # --json prints the same report it writes
    steps = report["steps"]
    assert steps["environment"]["info"]["backend"] == "local"
    correctness = steps["correctness"]["rows"]
    assert {r["kind"] for r in correctness} == {"dense", "kloop", "moe", "versatile", "width_only", "depth_only"}
    assert {(r["dtype"], r["mode"]) for r in correctness} == {(d, m) for d in ("float32", "bfloat16")
                                                              for m in ("train", "eval")}
    assert all(r["ok"] for r in correctness)
    assert {r["name"] for r in steps["layer_speed"]["rows"]} >= {"dense", "versatile", "versatile eval"}
    assert [r["kind"] for r in steps["throughput"]["rows"]] == ["dense", "versatile"]
    assert all(r["tokens_per_sec"] > 0 and r["steps_measured"] >= 2 for r in steps["throughput"]["rows"])
    assert steps["resume"]["bitwise"] is True
    table = (tmp_path / "gpu_check.md").read_text()
    for name in STEPS:
        assert f"| {name} | ok |" in table


@pytest.mark.slow
def test_a_failing_and_a_timed_out_step_do_not_stop_the_next(tmp_path):
    proc, report = run_check(tmp_path, "--only", "environment", "--only", "correctness", "--only", "layer_speed",
                             "--timeout", "correctness=1", env={"VFFN_GPU_CHECK_BREAK": "environment"})
    steps = report["steps"]
    assert steps["environment"]["status"] == "failed"
    assert "broken on purpose" in steps["environment"]["summary"]
    assert steps["correctness"]["status"] == "timeout"
    assert steps["layer_speed"]["status"] == "ok", steps["layer_speed"]
    assert steps["throughput"]["status"] == steps["resume"]["status"] == "skipped"
    assert proc.returncode == 1
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| environment | failed |" in table and "| correctness | timeout |" in table


def test_unknown_step_in_timeout_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--timeout", "nosuch=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nosuch" in proc.stderr
