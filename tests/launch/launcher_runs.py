"""Run the real launchers (launch/torchrun.sh, launch/slurm/pretrain.sbatch, Hydra multirun) from tests.

Every wait here has a deadline; a launcher still running at its deadline is killed (its whole process
group) or, for a SLURM job, cancelled, and the test fails with the tail of its log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.training import trainer_runs as cases

REPO_ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_SH = REPO_ROOT / "launch" / "torchrun.sh"
PRETRAIN_SBATCH = REPO_ROOT / "launch" / "slurm" / "pretrain.sbatch"

# Variables a launcher sets for its children; a test's own environment must not leak them into the runs.
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "NNODES", "NODE_RANK", "NPROC_PER_NODE", "RDZV_ENDPOINT", "GPUS_PER_NODE", "RUN_ROOT",
                  "RUN_NAME", "CUDA_VISIBLE_DEVICES")


def tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a launched run: this one, minus launcher variables, one CPU thread per process
    (bitwise-comparable losses, and two "nodes" sharing a small machine), this interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHON=sys.executable,
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    env.update(extra)
    return env


def losses(run_dir: Path) -> dict[int, float]:
    return cases.read_losses(run_dir)


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


# --- processes -------------------------------------------------------------------------------------------


@dataclass
class Done:
    returncode: int
    output: str
    seconds: float


class Proc:
    """A command in its own session, output to a file (a pipe could be held open by grandchildren)."""

    def __init__(self, cmd: list[str], env: dict, log: Path, cwd: Path = REPO_ROOT):
        self.log = log
        self._file = open(log, "w")
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        """Kill the whole process group (no-op once it has been waited for)."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=30)
        if not self._file.closed:
            self._file.close()

    def wait(self, timeout: float) -> Done:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            self._file.close()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers (or the whole launcher on a timeout)
            except (ProcessLookupError, PermissionError):
                pass
        out = self.log.read_text(errors="replace")
        if code is None:
            self.proc.wait(timeout=30)
            raise AssertionError(f"{self.proc.args[:2]} still running after {timeout:.0f} s; log:\n{tail(out)}")
        return Done(code, out, time.monotonic() - self.start)


def wait_for(condition, timeout: float, what: str, proc: Proc | None = None) -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` s, or at once when ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.proc.poll() is not None:
            done = proc.wait(timeout=1)
            raise AssertionError(f"exited ({done.returncode}) before {what}:\n{tail(done.output)}")
        if time.monotonic() > deadline:
            out = ""
            if proc is not None:
                try:
                    out = proc.wait(timeout=0.1).output
                except AssertionError as still_running:  # wait() has killed it; the message holds its log
                    out = str(still_running)
            raise AssertionError(f"no {what} after {timeout:.0f} s\n{tail(out)}")
        time.sleep(0.2)


def torchrun(overrides: list[str], log: Path, *, env: dict | None = None) -> Proc:
    """launch/torchrun.sh OVERRIDES with the launcher variables in ``env`` (NNODES, NODE_RANK, ...)."""
    return Proc(["bash", str(TORCHRUN_SH), *overrides], run_env(**(env or {})), log)


# --- SLURM ------------------------------------------------------------------------------------------------


def slurm_unavailable() -> str | None:
    """None when a SLURM cluster with >= 2 idle nodes answers; else why not (the skip reason)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (no sinfo/sbatch); `.ci/slurm_up.sh` installs and starts a local cluster"
    try:
        res = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], capture_output=True, text=True,
                             timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s; is slurmctld running? (`.ci/slurm_up.sh`)"
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["?"])[-1]
        return f"sinfo failed ({msg}); start the local cluster with `.ci/slurm_up.sh`"
    idle = sorted(set(res.stdout.split()))
    if len(idle) < 2:
        return f"SLURM has {len(idle)} idle node(s) ({', '.join(idle) or 'none'}), the tests need 2"
    return None


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job -o ID` as a dict (JobState, Restarts, ExitCode, ...); {} once SLURM forgot it."""
    res = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


@dataclass
class Job:
    job_id: str
    log: Path

    def info(self) -> dict[str, str]:
        return job_info(self.job_id)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cancel(self) -> None:
        subprocess.run(["scancel", self.job_id], capture_output=True, timeout=20)

    def wait(self, timeout: float, until=lambda info: info.get("JobState") in FINAL_STATES) -> dict[str, str]:
        """Poll until ``until(info)``; on the deadline cancel the job and fail with its state and log."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.info()
            if until(info):
                return info
            time.sleep(0.5)
        self.cancel()
        raise AssertionError(f"SLURM job {self.job_id} not done after {timeout:.0f} s "
                             f"(JobState={info.get('JobState')}, Reason={info.get('Reason')}); "
                             f"cancelled. Log:\n{tail(self.output())}")


def sbatch(args: list[str], overrides: list[str], log: Path, env: dict) -> Job:
    """Submit launch/slurm/pretrain.sbatch from the repository root with its log at ``log`` (``%j`` = job
    id); returns the job."""
    cmd = ["sbatch", "--parsable", f"--output={log}", *args, str(PRETRAIN_SBATCH), *overrides]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=30)
    assert res.returncode == 0, f"sbatch failed: {res.stderr}"
    job_id = res.stdout.strip().split(";")[0]
    return Job(job_id, Path(str(log).replace("%j", job_id)))
