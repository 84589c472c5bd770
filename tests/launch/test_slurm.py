"""launch/slurm/pretrain.sbatch on a real SLURM cluster (two slurmd "nodes" on localhost, `.ci/slurm_up.sh`):
a 2-node run completes; a preempted one saves, requeues itself, resumes and ends exactly like the uninterrupted
one; a job that asks for GPUs on a machine without any stops at once with a message; a submitit sweep job
survives its time-limit signal the same way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.launch import launcher_runs as helpers
from tests.launch.conftest import require_slurm
from tests.training import trainer_runs as cases

pytestmark = pytest.mark.slurm

STEPS = 40
JOB_TIMEOUT = 420  # s, per job attempt: queueing + start-up + 40 short steps, on a machine the other test
# worker keeps busy (about 60-180 s there; a hung job still fails)


def _overrides(data: str, cache, steps: int = STEPS) -> list[str]:
    return [*cases.BASE, f"data.paths={data}", f"data.cache_dir={cache}", "checkpoint.interval=1000",
            f"train.max_steps={steps}"]


def _submit(root, data, name: str, **env) -> helpers.Job:
    """A 2-node CPU job named ``name``; its run dir is RUN_ROOT/<name>-<job id> (the script's default)."""
    return helpers.sbatch([f"--job-name={name}"], _overrides(data, root / "cache"), root / f"{name}-%j.out",
                          helpers.run_env(**{"GPUS_PER_NODE": "0", "RUN_ROOT": str(root), **env}))


def _run_dir(root, job: helpers.Job):
    return root / job.log.name.removesuffix(".out")


@pytest.fixture(scope="module")
def slurm_root(tmp_path_factory):
    require_slurm()
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def uninterrupted(slurm_root, launch_data):
    """A 2-node tiny run to its end: (job, final scontrol info, run dir)."""
    job = _submit(slurm_root, launch_data, "straight")
    try:
        info = job.wait(JOB_TIMEOUT)
    finally:
        job.cancel()  # no-op once it ended
    return job, info, _run_dir(slurm_root, job)


def test_two_node_job_completes_with_checkpoint_and_metrics(uninterrupted):
    job, info, run_dir = uninterrupted
    log = job.output()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", helpers.tail(log)
    assert info["NumNodes"] == "2" and info["NodeList"] == "n[1-2]"
    # one launcher per node, one rank each: a world of 2 across the two slurmd nodes
    assert "node 0/2, 1 proc/node" in log and "node 1/2, 1 proc/node" in log
    assert "world 2 (TP 1 PP 1 DP 2)" in log
    summary = helpers.summary(run_dir)
    assert summary["steps"] == STEPS and summary["exit_code"] == 0
    assert summary["final_val_loss"] is not None
    ckpt = run_dir / "checkpoints" / f"step_{STEPS:07d}"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpt.name
    assert (ckpt / "metadata.json").is_file() and any(ckpt.glob("*.distcp"))
    assert sorted(helpers.losses(run_dir)) == list(range(1, STEPS + 1))


def _loss_steps(run_dir) -> list[int]:
    """Steps with a training loss in metrics.jsonl so far (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            steps.append(record["step"])
    return steps


def _saved_step(log: str, signal_name: str) -> int | None:
    """The step of the checkpoint the trainer saved on ``signal_name``, from the job log."""
    marker = f"{signal_name} received: saved "
    if marker not in log:
        return None
    return int(log.split(marker)[1].split(";")[0].rsplit("step_", 1)[1])


def test_preempted_twice_saves_requeues_resumes_and_matches_the_uninterrupted_run(
        slurm_root, launch_data, uninterrupted):
    """Both ways SLURM preempts: the time-limit warning (USR1 to the batch shell: the script requeues the job)
    and `scontrol requeue` (SIGTERM everywhere: SLURM requeues it). Each time the trainer saves first."""
    job = _submit(slurm_root, launch_data, "preempted")
    run_dir = _run_dir(slurm_root, job)
    ended = lambda info: info.get("JobState") in helpers.FINAL_STATES  # noqa: E731
    try:
        # Signal as soon as training runs (the first step is logged): most of the run is still ahead.
        job.wait(JOB_TIMEOUT, until=lambda info: len(_loss_steps(run_dir)) >= 1 or ended(info))
        # What SLURM sends before the time limit (--signal=B:USR1@120): USR1 to the batch shell only.
        subprocess.run(["scancel", "--signal=USR1", "--batch", job.job_id], check=True, timeout=30)

        def resumed_and_training(info) -> bool:
            saved = _saved_step(job.output(), "SIGUSR1")
            return ended(info) or (info.get("Restarts") == "1" and saved is not None
                                   and len(_loss_steps(run_dir)) >= saved + 1)

        first = job.wait(2 * JOB_TIMEOUT, until=resumed_and_training)
        assert not ended(first), helpers.tail(job.output())
        subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
        info = job.wait(2 * JOB_TIMEOUT)
    finally:
        job.cancel()
    log = job.output()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", helpers.tail(log)
    assert info["Restarts"] == "2", helpers.tail(log)
    for restart in range(3):
        assert f"job {job.job_id} (restart {restart})" in log  # one log, appended to by every attempt

    # attempt 1: USR1 -> save -> exit 3 -> the script requeues
    step1 = _saved_step(log, "SIGUSR1")
    assert f"trainer asked for a requeue: scontrol requeue {job.job_id}" in log
    # attempt 2: scontrol requeue -> SIGTERM -> save -> exit 3; SLURM requeued it, the script must not
    step2 = _saved_step(log, "SIGTERM")
    assert "SIGTERM: SLURM is cancelling or requeueing the job; this script will not requeue it" in log
    assert log.count("trainer asked for a requeue") == 1
    assert 1 <= step1 < step2 < STEPS, helpers.tail(log)
    assert f"resumed from step {step1}" in log and f"resumed from step {step2}" in log
    for step in (step1, step2, STEPS):
        assert (run_dir / "checkpoints" / f"step_{step:07d}" / "metadata.json").is_file()

    summary = helpers.summary(run_dir)
    assert summary["steps"] == STEPS and summary["exit_code"] == 0
    # every step ran exactly once over the three attempts, with the losses of the uninterrupted job
    assert _loss_steps(run_dir) == list(range(1, STEPS + 1))
    got, reference = helpers.losses(run_dir), helpers.losses(uninterrupted[2])
    assert [got[s] for s in range(1, STEPS + 1)] == [reference[s] for s in range(1, STEPS + 1)]


def test_gpus_asked_on_a_node_without_gpus_fail_at_once(slurm_root, launch_data):
    # Asked through the script's variable: the job stops before torchrun with a message, no NCCL hang.
    job = _submit(slurm_root, launch_data, "nogpu", GPUS_PER_NODE="2")
    try:
        info = job.wait(60)
    finally:
        job.cancel()
    log = job.output()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "1:0", helpers.tail(log)
    assert "ERROR: GPUS_PER_NODE=2 but nvidia-smi -L lists no GPU" in log
    assert "set GPUS_PER_NODE=0 for a CPU-only run" in log.replace("\n", " ")
    assert not (_run_dir(slurm_root, job) / "checkpoints").exists()

    # Asked through SLURM on a cluster without GPUs: sbatch itself refuses, at submission.
    res = subprocess.run(["sbatch", "--gpus-per-node=1", str(helpers.PRETRAIN_SBATCH)], capture_output=True,
                         text=True, timeout=30, cwd=helpers.REPO_ROOT,
                         env=helpers.run_env(RUN_ROOT=str(slurm_root)))
    assert res.returncode != 0
    assert "Invalid generic resource" in res.stderr or "gres" in res.stderr.lower(), res.stderr


def test_submitit_sweep_job_saves_on_usr2_requeues_and_resumes(slurm_root, launch_data):
    """hydra/launcher=submitit_slurm: submitit's time-limit signal (USR2) makes the trainer save and exit 3; the
    preset's srun wrapper requeues the job, which resumes in the same job directory; the sweep ends with 0."""
    steps = 100
    sweep = slurm_root / "submitit-sweep"
    cmd = [sys.executable, "-m", "vffn_pretrain.train", "-m", "hydra/launcher=submitit_slurm",
           "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
           *_overrides(launch_data, slurm_root / "cache", steps), "ffn=dense"]
    launcher = helpers.Proc(cmd, helpers.run_env(), slurm_root / "submitit-sweep.log")
    run_dir = sweep / "0"
    job = None
    try:
        helpers.wait_for(lambda: len(_loss_steps(run_dir)) >= 1, timeout=JOB_TIMEOUT, what="a logged step",
                         proc=launcher)
        (job_id,) = [d.name for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]  # .submitit/<job id>/
        job = helpers.Job(job_id, sweep / ".submitit" / job_id / f"{job_id}_0_log.out")
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
        done = launcher.wait(timeout=2 * JOB_TIMEOUT)
    finally:
        launcher.kill()
        if job is not None:
            job.cancel()
    assert done.returncode == 0, helpers.tail(done.output)
    log = job.output()
    assert job.info().get("Restarts") == "1", helpers.tail(log)
    saved = _saved_step(log, "SIGUSR2")
    assert saved is not None and 1 <= saved < steps, helpers.tail(log)
    assert f"[submitit_slurm] the trainer saved and exited 3: scontrol requeue {job.job_id}" in log
    assert f"resumed from step {saved}" in log
    assert _loss_steps(run_dir) == list(range(1, steps + 1))
    summary = helpers.summary(run_dir)
    assert summary["steps"] == steps and summary["exit_code"] == 0 and summary["variant"] == "dense"
