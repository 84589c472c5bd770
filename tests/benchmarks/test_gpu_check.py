"""benchmarks/gpu_check.py keeps working on CPU (--quick), and a step that fails or runs out of time is reported
as such while the steps after it still run and report."""

from __future__ import annotations

import contextlib
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

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
STEPS = ["environment", "correctness", "layer_speed", "throughput", "resume"]


def run_check(out: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    proc = run_in_session([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *args], timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
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


@pytest.mark.parametrize("sig, hang", [(signal.SIGKILL, False), (signal.SIGKILL, True), (signal.SIGTERM, False),
                                       (signal.SIGINT, False)], ids=["kill-9", "kill-9-silent-child", "term", "int"])
def test_a_stopped_runner_leaves_no_step_process(tmp_path, sig, hang):
    # The resume step runs vffn-pretrain in subprocesses: stop the runner while one of them is running. With
    # `hang`, the step's subprocess prints nothing, so it cannot die of a broken pipe when the step goes.
    env = dict(os.environ, OMP_NUM_THREADS="1", **({"VFFN_GPU_CHECK_HANG": "resume"} if hang else {}))
    runner = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--only", "resume", "--out", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env=env)
    deadline = time.monotonic() + 300
    while not (steps := children(runner.pid)) or not any(children(s) for s in steps):
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
        time.sleep(0.1)
    step = steps[0]  # leads a session of its own
    os.kill(runner.pid, sig)
    _, err = runner.communicate(timeout=120)
    survivors = wait_until_gone(step, GONE_WITHIN_S) + wait_until_gone(runner.pid, GONE_WITHIN_S)
    for group in (step, runner.pid):  # clean up before failing
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    assert not survivors, survivors
    if sig == signal.SIGTERM:
        assert runner.returncode == 128 + signal.SIGTERM
    if sig == signal.SIGINT:
        assert runner.returncode == 130 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("gpu_check: interrupted during step resume")


@pytest.mark.parametrize("args, words", [
    (["--timeout", "resume=abc"], "--timeout resume=abc"), (["--timeout", "resume=-5"], "--timeout resume=-5"),
    (["--timeout", "resume=nan"], "--timeout resume=nan"), (["--timeout", "resume=inf"], "--timeout resume=inf"),
    (["--timeout", "resume"], "--timeout resume:"), (["--layers", "0"], "--layers"), (["--layers", "-3"], "--layers"),
    (["--out", "{file}"], "exists and is not a directory"), (["--out", "{file}/sub"], "cannot be made"),
], ids=["not-a-number", "negative", "nan", "inf", "no-seconds", "zero-layers", "negative-layers", "out-is-a-file",
        "out-under-a-file"])
def test_bad_flags_are_one_line_and_exit_2_before_anything_runs(tmp_path, args, words):
    """(Issue 23's catalogue: gpu_check validates its flags: exit 2, one line naming the flag, nothing made.)"""
    (tmp_path / "afile").write_text("x")
    argv = [a.format(file=tmp_path / "afile") for a in args]
    argv = argv if "--out" in argv else ["--out", str(tmp_path / "report"), *argv]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and words in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
