"""Executing a study plan: trainer subprocesses, ``jobs`` at a time, resumable.

A run is *finished* when its ``summary.json`` says ``exit_code: 0`` after the planned number of steps; a
finished run is skipped. Any other run is started with the same command: the trainer resumes from the newest
checkpoint in its run directory (or, for a continued run with none yet, starts from its base's final
checkpoint). So rerunning ``vffn-study run`` after an interruption, a crash or a reboot picks up where it was.
A continued run starts only once its base is finished; when a run fails, the runs that depend on it are
reported as blocked and the others go on.

``OUT/study.json`` records the plan (every run's overrides); a rerun whose plan differs (another study file,
``--quick`` or not, another corpus) is refused rather than mixed into the same directory. A directory moved or
copied elsewhere plans the same runs under other paths: its record is rewritten for them. Each run's output
goes to ``OUT/logs/<run>.log`` (appended on resume). SIGINT, SIGTERM and SIGHUP are passed on to the running
trainers, which save a checkpoint and stop; no further run starts, and ``run_plan`` raises ``Interrupted`` once
they have exited (rerun the same command to resume). The trainers watch this process (``lifetime.child_env``):
killed with kill -9, it leaves none behind (each saves and exits, or is killed a minute later).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vffn_pretrain.outputs.atomic import write_json_atomic
from vffn_pretrain.study.plan import PlannedRun

POLL_S = 2.0


class StudyDirError(ValueError):
    """The output directory holds another study."""


def take_lock(out: Path):
    """Claim OUT for this process (`OUT/vffn-study.lock`, host and PID); OutputInUse if another live process
    has it. Returns the held lock (`release()` it at the end)."""
    from vffn_pretrain.outputs.lock import OwnerLock

    out.mkdir(parents=True, exist_ok=True)
    lock = OwnerLock(out / "vffn-study.lock", str(out), sharing="another vffn-study run is working on it; wait "
                     "for it or stop it", warn=lambda message: print(f"vffn-study: {message}", file=sys.stderr))
    return lock.acquire()


def is_finished(run: PlannedRun) -> bool:
    try:
        summary = json.loads((run.run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("exit_code") == 0 and summary.get("steps") == run.steps


def log_path(out: Path, run: PlannedRun) -> Path:
    return out / "logs" / (run.name.replace("/", "_") + ".log")


def command(run: PlannedRun) -> list[str]:
    return [sys.executable, "-m", "vffn_pretrain.train", *run.overrides]


def record_plan(out: Path, plan: list[PlannedRun], meta: dict, log=print) -> None:
    """Write OUT/study.json, or check that the one there describes the same runs. A study directory that was
    moved or copied (or a corpus rebuilt elsewhere with the same manifest) holds the same runs under other
    paths: its record is rewritten for the new paths, with a line saying so."""
    out.mkdir(parents=True, exist_ok=True)
    record = {**meta, "runs": [{"name": r.name, "phase": r.phase, "variant": r.variant, "ffn": r.ffn,
                                "kind": r.kind, "seed": r.seed, "steps": r.steps, "run_dir": str(r.run_dir),
                                "after": r.after, "overrides": list(r.overrides)} for r in plan]}
    path = out / "study.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict):
            raise StudyDirError(f"{path}: exists but is not a study record (JSON object); move it away to start "
                                "afresh") from None
        if old.get("runs") == record["runs"]:
            return
        moved = _relocated(old, record, out)
        if moved is None:
            raise StudyDirError(f"{out}: holds a study with other runs ({old.get('config')}, quick="
                                f"{old.get('quick')}); use another --out")
        log(f"study: {path} was written for {moved}; it now names {out.resolve()}"
            + (f" with the corpus {_corpus_dir(record['runs'])}" if "with the corpus" in moved else "")
            + " (same runs)")
    write_json_atomic(path, record)


# Overrides whose values are paths a study plans: under the study directory or the corpus.
PATH_KEYS = ("run_dir", "train.init_from", "data.train_paths", "data.valid_paths", "data.test_paths",
             "data.tokenizer")
CORPUS_IDENTITY_KEYS = ("corpus", "tokenizer", "splits")  # the data: names and checksums, not the build


def _relocated(old: dict, record: dict, out: Path) -> str | None:
    """Where the old record's study and corpus lay, when it plans exactly `record`'s runs once its paths under
    the study directory and the corpus are read as this study's; None when the runs differ otherwise. Both
    records' paths are the absolute ones they were written with (nothing of the old machine is resolved here);
    the corpus counts as the same only when both manifests name the same data (tokenizer and split
    checksums)."""
    try:
        old_out, old_corpus = _study_dir(old["runs"][0]), _corpus_dir(old["runs"])
        new_corpus = _corpus_dir(record["runs"])
        if (old_corpus is None) != (new_corpus is None) or (old_corpus is not None and (
                _corpus_identity(old.get("corpus_manifest")) != _corpus_identity(record.get("corpus_manifest")))):
            return None
        portable_old = [_portable(r, old_out, old_corpus) for r in old["runs"]]
        portable_new = [_portable(r, str(out.resolve()), new_corpus) for r in record["runs"]]
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return None
    if portable_old != portable_new:
        return None
    return f"{old_out}" + (f" with the corpus {old_corpus}" if old_corpus and old_corpus != new_corpus else "")


def _study_dir(run: dict) -> str:
    """The study directory a recorded run lies in (its run_dir less its name)."""
    run_dir, depth = Path(run["run_dir"]), len(Path(run["name"]).parts)
    if not run_dir.is_absolute() or depth < 1 or len(run_dir.parts) <= depth:
        raise ValueError(run_dir)
    return str(run_dir.parents[depth - 1])


def _corpus_dir(runs: list) -> str | None:
    """The corpus directory a recorded plan reads (the folder of its data.tokenizer), None for the bundled
    corpus."""
    for override in runs[0]["overrides"]:
        key, _, value = override.partition("=")
        if key == "data.tokenizer":
            return str(Path(value).parent)
    return None


def _corpus_identity(manifest) -> dict | None:
    return {k: manifest.get(k) for k in CORPUS_IDENTITY_KEYS} if isinstance(manifest, dict) else None


def _portable(run: dict, study_dir: str, corpus_dir: str | None) -> dict:
    """A recorded run with its paths under the study directory and the corpus written as $STUDY/... and
    $CORPUS/... (whole path components only: /x/study does not match /x/study2)."""
    def portable_path(path: str) -> str:
        for root, name in ((study_dir, "$STUDY"), (corpus_dir, "$CORPUS")):
            if root is not None and (path == root or path.startswith(root.rstrip("/") + "/")):
                return name + path[len(root):]
        return path

    def portable_value(value: str) -> str:
        if value.startswith("[") and value.endswith("]"):
            return "[" + ",".join(portable_path(v) for v in value[1:-1].split(",")) + "]"
        return portable_path(value)

    overrides = []
    for override in run["overrides"]:
        key, sep, value = override.partition("=")
        overrides.append(f"{key}{sep}{portable_value(value)}" if key in PATH_KEYS else override)
    return {**run, "run_dir": portable_path(run["run_dir"]), "overrides": overrides}


def run_plan(plan: list[PlannedRun], out: Path, *, jobs: int = 1, threads: int = 1, log=print) -> dict[str, str]:
    """Run what is not finished; return {run name: "finished" | "failed (exit N)" | "blocked by NAME"}. Raises
    Interrupted (a KeyboardInterrupt) after a stop signal, once the running trainers have exited."""
    from vffn_pretrain.process.interrupts import Interrupted
    from vffn_pretrain.process.lifetime import child_env

    status: dict[str, str] = {r.name: "finished" for r in plan if is_finished(r)}
    pending = [r for r in plan if r.name not in status]
    if len(status):
        log(f"study: {len(status)} of {len(plan)} runs already finished; {len(pending)} to run")
    env = child_env({**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    running: dict[str, tuple[PlannedRun, subprocess.Popen, float]] = {}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    stop: list[str] = []  # the stop signals received

    def forward(signum, _frame):
        name = signal.Signals(signum).name
        if not stop:
            log(f"study: {name}: asking the running trainers to save and stop; no further run starts")
        stop.append(name)
        for _run, proc, _t in running.values():
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while (pending and not stop) or running:
            for run in list(pending):
                if run.after is not None and status.get(run.after, "").startswith(("failed", "blocked")):
                    status[run.name] = f"blocked by {run.after}"
                    pending.remove(run)
            ready = [r for r in pending if r.after is None or status.get(r.after) == "finished"]
            while ready and len(running) < jobs and not stop:
                run = ready.pop(0)
                pending.remove(run)
                resuming = (run.run_dir / "checkpoints").is_dir()
                log(f"study: start {run.name}{' (resuming)' if resuming else ''}")
                with open(log_path(out, run), "a") as f:
                    f.write(f"\n# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command(run))}\n")
                    f.flush()
                    proc = subprocess.Popen(command(run), stdout=f, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
                running[run.name] = (run, proc, time.perf_counter())
            if not running:
                continue  # only blocked runs were left: the loop above marks them
            time.sleep(POLL_S)
            for name, (run, proc, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                if rc == 0 and is_finished(run):
                    status[name] = "finished"
                    log(f"study: finished {name} in {time.perf_counter() - t0:.0f}s")
                elif stop:
                    log(f"study: {name} stopped (exit {rc}); the same command resumes it")
                else:
                    status[name] = f"failed (exit {rc})"
                    log(f"study: {name} failed with exit {rc}; see {log_path(out, run)}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for _run, proc, _t in running.values():  # an exception above: do not leave trainers behind
            proc.wait()
    if stop:
        raise Interrupted(stop[0])
    return status
