"""Two writers and killed processes (issue classes 2 and 3): a second trainer on a run_dir is refused, and after
kill -9 no helper of the trainer or of `vffn-data tokenize` survives; the next run takes over what was left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from data_tools.cli import main as vffn_data
from tests.faults.processes import children, wait_until_gone
from tests.training import trainer_runs as cases

# A helper notices its parent's death within lifetime.POLL_S; the rest is slack for a loaded machine.
GONE_WITHIN_S = 30


def _args(base_overrides, run_dir, *extra):
    return [*base_overrides, f"run_dir={run_dir}", *extra]


def test_second_trainer_is_refused_and_kill_9_leaves_no_process(base_overrides, tmp_path):
    run = tmp_path / "run"
    args = _args(base_overrides, run, "train.max_steps=400", "checkpoint.interval=2")
    first = cases.train_subprocess(args, wait=False)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "step_0000002").is_dir():  # the checkpoint writer's helpers exist now
            assert first.poll() is None and time.monotonic() < deadline, first.output[-3000:]
            time.sleep(0.1)

        second = cases.train_subprocess(args, timeout=120)
        assert second.returncode == 1, second.stdout[-3000:]
        assert "Traceback" not in second.stdout
        assert f"is in use by PID {first.proc.pid} on this host" in second.stdout

        sid = first.proc.pid  # started in a session of its own
        first.send_signal(signal.SIGKILL)
        first.proc.wait()
        survivors = wait_until_gone(sid, GONE_WITHIN_S)
    finally:
        first.wait()  # kills the session's leftovers (the whole first trainer, if an assertion above failed)
    assert not survivors, survivors

    third = cases.train_subprocess([*args, "train.exit_interval=1"])
    assert third.returncode == 0, third.stdout[-3000:]
    assert f"taking over the lock of {run} from PID {sid}" in third.stdout
    assert not (run / "vffn-pretrain.lock").exists()  # released at the end
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]  # the training records (a saved checkpoint has one too)
    assert steps == sorted(set(steps)), steps  # each step once, although the killed run logged past its checkpoint


def test_killed_tokenizer_leaves_no_worker_and_its_partial_files_are_swept(tmp_path, capsys):
    src = tmp_path / "big.jsonl"
    line = json.dumps({"text": " ".join(str(i % 97) for i in range(2000))}) + "\n"
    src.write_text(line * 4000)  # about 40 MB of work: far more than the test waits for
    prefix = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_tools.cli", "tokenize", "--input", str(src), "--output-prefix", str(prefix),
           "--tokenizer", "null:100", "--workers", "2", "--chunk-mb", "0.05", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    partial = tmp_path / f"out.bin.partial-{proc.pid}"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0 and len(children(proc.pid)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    survivors = wait_until_gone(proc.pid, GONE_WITHIN_S)
    if survivors:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not survivors, survivors
    assert partial.exists()

    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "1 2 3"}\n')
    capsys.readouterr()
    assert vffn_data(["tokenize", "--input", str(small), "--output-prefix", str(prefix), "--tokenizer", "null:100",
                      "--workers", "0"]) == 0
    assert f"removed {partial}, left by process {proc.pid}, which is gone" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("out*")) == ["out.bin", "out.idx", "out.report.json"]


def test_a_thousand_workers_are_capped_and_ctrl_c_stops_the_run_cleanly(tmp_path):
    from vffn_pretrain.data.tokenizing.pipeline import usable_cpus

    src = tmp_path / "big.jsonl"
    line = json.dumps({"text": " ".join(str(i % 97) for i in range(2000))}) + "\n"
    src.write_text(line * 4000)  # about 40 MB: the run is still going when Ctrl-C comes
    prefix = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_tools.cli", "tokenize", "--input", str(src), "--output-prefix", str(prefix),
           "--tokenizer", "null:100", "--workers", "1000", "--chunk-mb", "0.05", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    partial = tmp_path / f"out.bin.partial-{proc.pid}"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0):  # started, and making progress
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    workers = len(children(proc.pid))
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        survivors = wait_until_gone(proc.pid, GONE_WITHIN_S)
        if survivors:
            os.killpg(proc.pid, signal.SIGKILL)
    assert 1 <= workers <= usable_cpus()
    assert f"--workers 1000 capped at {usable_cpus()}: {usable_cpus()} usable CPUs" in err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "vffn-data: interrupted; no output was written"
    assert not survivors, survivors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]  # no partial, no report, no prefix


def test_a_thousand_workers_on_a_small_input_run_as_one(tmp_path):
    src = tmp_path / "small.jsonl"
    src.write_text('{"text": "1 2 3"}\n{"text": "4 5"}\n')
    cmd = [sys.executable, "-m", "data_tools.cli", "tokenize", "--input", str(src), "--output-prefix",
           str(tmp_path / "out"), "--tokenizer", "null:100", "--workers", "1000", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--workers 1000 capped at 1:" in done.stderr
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["options"]["workers"] == 1 and report["documents"]["written"] == 2


FORKED_WRITER = """
import multiprocessing, sys, time
import vffn_pretrain  # noqa: F401  (what a trainer has imported before megatron-core forks its writers)

def write_forever():
    time.sleep(3600)  # a checkpoint writer blocked in fsync, or in a full pipe to its dead parent

if __name__ == "__main__":
    multiprocessing.get_context("fork").Process(target=write_forever).start()
    print("forked", flush=True)
    time.sleep(3600)
"""


def test_a_forked_helper_exits_when_its_parent_is_killed(tmp_path):
    """megatron-core's file writer forks one process per bucket; forked children re-import nothing, so they
    need the at-fork watch (a CI run found the trainer's session alive 15 s after its kill -9)."""
    script = tmp_path / "forks.py"
    script.write_text(FORKED_WRITER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "forked"
        assert len(children(proc.pid)) == 1
        proc.kill()
        proc.wait()
        survivors = wait_until_gone(proc.pid, GONE_WITHIN_S)
    finally:
        if wait_until_gone(proc.pid, 0):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not survivors, survivors


def test_a_child_whose_parent_died_before_the_watch_started_still_exits(tmp_path):
    """The watch compares with the PID that started the child, not with getppid() at the time it starts: a
    child whose parent died while it was starting up is already re-parented (to PID 1 or a subreaper)."""
    code = ("import time\nfrom vffn_pretrain.process.lifetime import exit_with_parent\n"
            "exit_with_parent(parent=2**22 + 12345)  # a parent that is not (or no longer) ours\ntime.sleep(60)\n")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 1 and time.monotonic() - t0 < 30
