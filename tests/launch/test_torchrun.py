"""launch/torchrun.sh for real: two launcher processes as two nodes on loopback, and the failures that must end
with a clear message and a non-zero exit instead of a hang."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.launch import launcher_runs as helpers
from vffn_pretrain.parallel.init import free_port

STEPS = 3


def test_two_nodes_on_loopback_match_one_node_with_two_ranks(tiny, tmp_path):
    args = [*tiny, f"train.max_steps={STEPS}"]
    one = helpers.torchrun([*args, f"run_dir={tmp_path / 'one'}"], tmp_path / "one.log",
                           env={"NPROC_PER_NODE": "2"}).wait(timeout=180)
    assert one.returncode == 0, helpers.tail(one.output)
    assert "--standalone" in one.output and "world 2 (TP 1 PP 1 DP 2)" in one.output

    two = tmp_path / "two"
    rdzv = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "RDZV_TIMEOUT": "120"}
    nodes = [helpers.torchrun([*args, f"run_dir={two}"], tmp_path / f"node{r}.log", env={**rdzv, "NODE_RANK": str(r)})
             for r in (0, 1)]
    try:
        done = [n.wait(timeout=240) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    for r, d in enumerate(done):
        assert d.returncode == 0, f"node {r}:\n{helpers.tail(d.output)}"
        assert f"node {r}/2, 1 proc/node, --nnodes=2 --node-rank={r}" in d.output
    assert "world 2 (TP 1 PP 1 DP 2)" in done[0].output  # rank 0 (node 0) logs

    ref, got = helpers.losses(tmp_path / "one"), helpers.losses(two)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in sorted(got)] == [ref[s] for s in sorted(ref)]  # bitwise: same world, same math
    assert helpers.summary(two)["steps"] == STEPS
    assert (two / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:07d}"


def test_unreachable_master_fails_fast_with_a_clear_message(tiny, tmp_path):
    """Three ways to wait for a master that never answers, run side by side: torchrun's node 1 pointed at a port
    where nobody listens and torchrun's node 0 whose peer never comes (both bounded by RDZV_TIMEOUT), and the
    trainer alone with RANK/MASTER_* set by hand, as srun tasks without torchrun get them (bounded by
    parallel.init_timeout_s). Each ends non-zero and says where it tried to meet."""
    args = [*tiny, "train.max_steps=1", f"run_dir={tmp_path / 'run'}"]
    common = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "RDZV_TIMEOUT": "5"}
    dead_port, lonely_port, trainer_port = free_port(), free_port(), free_port()
    trainer_env = helpers.run_env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=str(trainer_port))
    procs = {
        "node 1": helpers.torchrun(args, tmp_path / "n1.log",
                                   env={**common, "NODE_RANK": "1", "MASTER_PORT": str(dead_port)}),
        "node 0": helpers.torchrun(args, tmp_path / "n0.log",
                                   env={**common, "NODE_RANK": "0", "MASTER_PORT": str(lonely_port)}),
        "trainer": helpers.Proc([sys.executable, "-m", "vffn_pretrain.train", *args, "parallel.init_timeout_s=5"],
                                trainer_env, tmp_path / "trainer.log"),
    }
    expected = {
        "node 1": f"the rendezvous at 127.0.0.1:{dead_port} as node 1 of 2 failed or timed out (RDZV_TIMEOUT=5s)",
        "node 0": f"the rendezvous at 127.0.0.1:{lonely_port} as node 0 of 2 failed or timed out (RDZV_TIMEOUT=5s)",
        "trainer": f"rank 1 of 2 could not join the process group at 127.0.0.1:{trainer_port} within 5 s "
                   "(parallel.init_timeout_s)",
    }
    try:
        done = {name: p.wait(timeout=240) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    for name, d in done.items():
        assert d.returncode != 0, f"{name}:\n{helpers.tail(d.output)}"
        assert expected[name] in d.output, f"{name}:\n{helpers.tail(d.output)}"
        # Bounded by the 5 s timeouts, not by the defaults (RDZV_TIMEOUT 600 s, parallel.init_timeout_s 300 s). The
        # rest is start-up: three processes import megatron at once (the config check, then torchrun), which took
        # 35 s on an idle 2-core machine and 65 s on a busy CI host.
        assert d.seconds < 150, name
    for rank in (0, 1):
        assert f"[torchrun.sh] ERROR: torchrun exited with {done[f'node {rank}'].returncode} before starting any " \
               "worker" in done[f"node {rank}"].output


def test_init_from_a_missing_checkpoint_fails_on_every_rank(tiny, tmp_path):
    missing = tmp_path / "no" / "such" / "checkpoints"
    done = helpers.torchrun([*tiny, "train.max_steps=2", f"run_dir={tmp_path / 'run'}", f"train.init_from={missing}"],
                            tmp_path / "run.log", env={"NPROC_PER_NODE": "2"}).wait(timeout=180)
    assert done.returncode != 0
    assert f"train.init_from`: {missing}: neither a checkpoint nor a directory of checkpoints" in done.output, \
        helpers.tail(done.output)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained, nothing saved


def test_launcher_passes_the_requeue_code_through(tiny, tmp_path):
    """A worker's exit 3 (saved after SIGUSR1, requeue me) survives torchrun, which reports any failure as 1."""
    run = helpers.torchrun([*tiny, "train.max_steps=400", f"run_dir={tmp_path / 'run'}"], tmp_path / "run.log",
                           env={"NPROC_PER_NODE": "2"})
    metrics = tmp_path / "run" / "metrics.jsonl"
    helpers.wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, timeout=300,
                     what="two logged steps", proc=run)
    subprocess.run(["kill", "-USR1", str(run.proc.pid)], check=True)  # the launcher script, as SLURM would
    done = run.wait(timeout=120)
    assert done.returncode == 3, helpers.tail(done.output)
    assert "[torchrun.sh] got SIGUSR1, forwarding it to the workers" in done.output
    assert "[torchrun.sh] a worker exited 3: requeue requested" in done.output
    # torchrun's report of the "failed" workers is one line, not its ChildFailedError traceback
    assert "Traceback" not in done.output and "ChildFailedError" not in done.output, helpers.tail(done.output)
    assert re.search(r"^\[torchrun\] worker rank [01] \(local rank [01], PID \d+\) exited with 3", done.output,
                     re.MULTILINE), helpers.tail(done.output)  # the first to exit, either of the two
    steps = helpers.summary(tmp_path / "run")["steps"]
    assert 2 <= steps < 400
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == f"step_{steps:07d}"


def test_a_bad_config_is_one_line_and_exit_2_not_torchruns_report(tiny, tmp_path):
    """The config is checked once before torchrun starts workers: one line (not one per worker, not torchrun's
    ChildFailedError traceback), exit 2 (not torchrun's 1), nothing started, nothing written."""
    done = helpers.torchrun([*tiny, "train.max_steps=2", f"run_dir={tmp_path / 'run'}", "train.beta2=1.5"],
                            tmp_path / "run.log", env={"NPROC_PER_NODE": "2"}).wait(timeout=120)
    assert done.returncode == 2, helpers.tail(done.output)
    assert done.output.splitlines() == [
        "vffn-pretrain: bad config: config key `train.beta2`: must be in [0, 1), got 1.5"], done.output
    assert not (tmp_path / "run").exists()


def test_a_killed_launcher_leaves_no_process_and_the_run_saved(tiny, tmp_path):
    """kill -9 of launch/torchrun.sh (issue 23, class 5): torchrun gets SIGTERM from the kernel (with_parent.py),
    stops its workers, which save and exit; none of the launcher's descendants is left running."""
    import os
    import signal
    import time

    from tests.faults.processes import children, describe
    from vffn_pretrain.process.lifetime import pid_alive

    run = helpers.torchrun([*tiny, "train.max_steps=400", f"run_dir={tmp_path / 'run'}"], tmp_path / "run.log",
                           env={"NPROC_PER_NODE": "2", "SHUTDOWN_TIMEOUT": "60"})
    metrics = tmp_path / "run" / "metrics.jsonl"
    helpers.wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, timeout=300,
                     what="two logged steps", proc=run)
    family, todo = [], [run.proc.pid]
    while todo:  # torchrun and its workers (which lead sessions of their own), and theirs
        pid = todo.pop()
        family += children(pid)
        todo += children(pid)
    assert len(family) >= 3, family  # torchrun and two workers
    run.proc.kill()  # the script alone
    run.proc.wait()
    deadline = time.monotonic() + 90
    while any(pid_alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [(pid, describe(pid)) for pid in family if pid_alive(pid)]
    for pid in family:  # (a failed assertion must not leave them running)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run.kill()
    assert not survivors, survivors
    steps = helpers.summary(tmp_path / "run")["steps"]
    assert 2 <= steps < 400  # saved on the way out
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == f"step_{steps:07d}"


@pytest.mark.parametrize("victim", [0, 1])
def test_a_worker_killed_mid_run_ends_the_run_with_one_line_per_cause(tiny, tmp_path, victim):
    """A worker killed outright (the OOM killer, kill -9) in step 3: the other finds out in its next collective.
    No traceback: the survivor says in one line that it lost contact (rank 0 speaks for the run, so a surviving
    rank 1 says nothing more), and the launcher's line names the killed worker first. The checkpoint saved before
    is intact; the run is not requeued (exit 1)."""
    run = tmp_path / "run"
    done = helpers.torchrun([*tiny, "train.max_steps=8", "checkpoint.interval=2", f"run_dir={run}"],
                            tmp_path / "run.log",
                            env={"NPROC_PER_NODE": "2", "VFFN_FAULT_KILL_RANK": f"{victim}:3"}).wait(timeout=240)
    out = done.output
    assert done.returncode == 1, helpers.tail(out)
    assert "Traceback" not in out and "Error executing job" not in out, helpers.tail(out)
    assert "failed (exitcode" not in out, helpers.tail(out)  # torchrun's own log line says what ours says
    assert re.search(rf"^\[torchrun\] worker rank {victim} \(local rank {victim}, PID \d+\) exited with -9 "
                     rf"\(SIGKILL\); then rank {1 - victim} ", out, re.MULTILINE), helpers.tail(out)
    lost = "vffn-pretrain: error: lost contact with another rank in a collective ("
    assert out.count(lost) == (1 if victim == 1 else 0), helpers.tail(out)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
