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


@pytest.mark.parametrize("item", ["nosuch=3", "resume=abc", "resume=-5", "resume=inf"])
def test_a_bad_timeout_is_one_line_and_exit_2(tmp_path, item):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--timeout", item],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and item in proc.stderr


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
    if sig in (signal.SIGTERM, signal.SIGINT):  # one line and 130, as every tool
        assert runner.returncode == 130 and "Traceback" not in err
        said = "interrupted" if sig == signal.SIGINT else "interrupted by SIGTERM"
        assert err.strip().splitlines()[-1].startswith(f"gpu_check: {said} during step resume"), err


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
def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_that_asks_for_more_time_gets_it_and_one_that_does_not_times_out(tmp_path):
    gpu_check = _gpu_check()
    budget = tmp_path / "step-x.budget"
    asks = (f"from pathlib import Path; import time; Path({str(budget)!r}).write_text('5'); time.sleep(2.5)")
    proc = subprocess.Popen([sys.executable, "-c", asks])
    assert gpu_check.wait_within(proc, 1.0, budget) is None  # finished after 2.5 s, within the 5 s it asked for
    budget.unlink()
    proc = subprocess.Popen([sys.executable, "-c", asks])
    try:
        assert gpu_check.wait_within(proc, 1.0, None) == 1.0  # not extendable (an explicit --timeout)
    finally:
        proc.kill()
        proc.wait()
    budget.write_text("10000")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        gpu_check.MAX_STEP_SECONDS = 2.0  # a request is capped
        assert gpu_check.wait_within(proc, 1.0, budget) == 2.0
    finally:
        proc.kill()
        proc.wait()


def test_resume_verdict_is_bitwise_where_the_run_repeats_itself_and_a_stated_tolerance_otherwise():
    verdict = _gpu_check().resume_verdict
    straight = {4: 5.0, 5: 4.5, 6: 4.0}
    never = lambda: pytest.fail("repeated although bitwise")  # noqa: E731
    assert verdict(straight, dict(straight), never)["ok"]
    off = {4: 5.0, 5: 4.5, 6: 4.0 * (1 + 1e-4)}
    changed = verdict(straight, off, lambda: dict(straight))  # deterministic, yet the resume differs
    assert not changed["ok"] and "resume changed the run" in changed["summary"]
    noisy = {4: 5.0, 5: 4.5 * (1 + 1e-6), 6: 4.0}
    within = verdict(straight, off, lambda: noisy)  # kernels not deterministic: judged against the tolerance
    assert within["ok"] and "within the tolerance" in within["summary"]
    far = {4: 5.0, 5: 4.5, 6: 4.0 * 1.01}
    assert not verdict(straight, far, lambda: noisy)["ok"]
    assert not verdict(straight, {4: 5.0, 5: 4.5}, never)["ok"]  # a step missing
