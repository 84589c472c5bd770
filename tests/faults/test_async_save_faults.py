"""checkpoint.async_save under faults during a background write: a full disk, kill -9 of the writer or of the
trainer, SIGTERM. The write is held in flight by `VFFN_FAULT_SLOW_WRITE` (the writer waits before writing); each
case must leave `latest` on a complete checkpoint and no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

from tests.faults import trainer_cases
from tests.faults.processes import children, wait_until_gone
from tests.training import trainer_runs as cases
from vffn_pretrain.training.run_lock import LOCK_NAME

GONE_WITHIN_S = 30  # as tests/faults/test_processes.py: a helper notices its parent's death within 0.5 s


def _args(base_overrides, run_dir, *extra):
    return [*base_overrides, f"run_dir={run_dir}", "checkpoint.async_save=true", *extra]


@contextlib.contextmanager
def _trainer(args: list[str], env: dict):
    """A trainer subprocess; its whole session is killed on the way out, whatever the test found."""
    proc = cases.train_subprocess(args, env=env, wait=False)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.proc.pid, signal.SIGKILL)


def _wait_for(proc, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output:
        assert proc.poll() is None, proc.output[-3000:]
        assert time.monotonic() < deadline, proc.output[-3000:]
        time.sleep(0.1)


def _writer(proc) -> int:
    """The background writer: the trainer's forked child (same command line; the others are spawned helpers)."""
    own = open(f"/proc/{proc.proc.pid}/cmdline", "rb").read()
    forked = [pid for pid in children(proc.proc.pid) if open(f"/proc/{pid}/cmdline", "rb").read() == own]
    assert len(forked) == 1, forked
    return forked[0]


def _names(ckpts) -> list[str]:
    """The checkpoints and markers (not the lock a live or killed trainer holds on checkpoint.dir)."""
    return sorted(p.name for p in ckpts.iterdir() if p.name != LOCK_NAME)


def test_full_disk_during_a_background_write_stops_the_run_with_the_previous_checkpoint(
        rank_pools, base_overrides, tmp_path):
    run = tmp_path / "run"
    out = rank_pools(1).run(trainer_cases.train_with_faults,
                            _args(base_overrides, run, "train.max_steps=6", "checkpoint.interval=2"),
                            {"enospc_in_save": 4})[0]
    assert out["exit_code"] == 1
    ckpts = run / "checkpoints"
    assert _names(ckpts) == ["latest", "step_0000002"]  # the partial .tmp-step_0000004 is removed
    assert (ckpts / "latest").read_text().strip() == "step_0000002"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exit_code"] == 1 and summary["checkpoint"].endswith("step_0000002")
    assert summary["steps"] in (5, 6)  # noticed at the step after the save, or at the next save at the latest


def test_kill_9_of_the_writer_is_reported_in_one_line_and_keeps_the_previous_checkpoint(base_overrides, tmp_path):
    run = tmp_path / "run"
    args = _args(base_overrides, run, "train.max_steps=40", "checkpoint.interval=2", "checkpoint.keep=1")
    with _trainer(args, {"VFFN_FAULT_SLOW_WRITE": "4:600"}) as proc:
        _wait_for(proc, "step_0000004 in the background")
        writer = _writer(proc)
        ckpts = run / "checkpoints"
        assert _names(ckpts) == [".tmp-step_0000004", "latest", "step_0000002"]  # keep=1, yet nothing pruned yet
        os.kill(writer, signal.SIGKILL)
        proc.proc.wait(timeout=120)
        survivors = wait_until_gone(proc.proc.pid, GONE_WITHIN_S)
        done = proc.wait()
    assert done.returncode == 1, done.stdout[-3000:]
    assert "Traceback" not in done.stdout
    errors = [line for line in done.stdout.splitlines() if "error" in line.lower()]
    assert errors == [f"error: saving checkpoint {ckpts / 'step_0000004'} failed: the background writer (PID "
                      f"{writer}) was killed by signal 9; removed the partial .tmp-step_0000004, older checkpoints "
                      "are intact"], errors
    assert _names(ckpts) == ["latest", "step_0000002"]
    assert (ckpts / "latest").read_text().strip() == "step_0000002"
    assert not survivors, survivors


def test_kill_9_of_the_trainer_during_a_background_write_leaves_latest_and_no_process(
        rank_pools, base_overrides, tmp_path):
    run = tmp_path / "run"
    args = _args(base_overrides, run, "train.max_steps=5", "checkpoint.interval=2")
    with _trainer(args, {"VFFN_FAULT_SLOW_WRITE": "4:600"}) as proc:
        _wait_for(proc, "step_0000004 in the background")
        _writer(proc)  # in flight
        proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
        survivors = wait_until_gone(proc.proc.pid, GONE_WITHIN_S)
    assert not survivors, survivors
    ckpts = run / "checkpoints"
    assert _names(ckpts) == [".tmp-step_0000004", "latest", "step_0000002"]
    assert (ckpts / "latest").read_text().strip() == "step_0000002"
    resumed = rank_pools(1).run(cases.train, args)[0]  # the same command
    assert resumed["exit_code"] == 0 and resumed["summary"]["steps"] == 5
    assert _names(ckpts) == ["latest", "step_0000002", "step_0000004", "step_0000005"]


def test_sigterm_to_the_job_during_a_background_write_completes_it_then_saves_and_exits_3(base_overrides, tmp_path):
    """The signal goes to every process of the session, as SLURM signals a job step: megatron-core's helper
    processes must survive it for the saves to complete."""
    run = tmp_path / "run"
    args = _args(base_overrides, run, "train.max_steps=400", "checkpoint.interval=2")
    with _trainer(args, {"VFFN_FAULT_SLOW_WRITE": "2:4"}) as proc:
        # The signal comes while the write of step 2 is held back and training has gone on.
        _wait_for(proc, "step_0000002 in the background")
        _wait_for(proc, "step      3/")
        os.killpg(proc.proc.pid, signal.SIGTERM)
        done = proc.wait(timeout=240)
    out = done.stdout
    assert done.returncode == 3, out[-3000:]
    ckpts = run / "checkpoints"
    stopped_at = (ckpts / "latest").read_text().strip()
    assert stopped_at > "step_0000002" and stopped_at == _names(ckpts)[-1] and (ckpts / "step_0000002").is_dir()
    first = out.index(f"saved checkpoint {ckpts / 'step_0000002'} ")
    second = out.index(f"saved checkpoint {ckpts / stopped_at} ")
    assert first < second < out.index(f"SIGTERM received: saved {ckpts / stopped_at}; exiting with 3")
