"""The trainer's classes of faults (issue 23), each tested as a mechanism on cases nobody listed before:

1. a run that does no work leaves the results alone;       3. one writer per directory a run writes;
4. a resume is the same model (and says when the data changed);  5. a stop signal at every phase;
6. no false success;  7. any damaged piece of the newest checkpoint falls back, rank 0 chooses it;
8. a full disk or a directory that cannot be written.

Runs are in-process on a pool (`trainer_cases.run_as_the_cli_does`, which is `trainer.run` as vffn-pretrain
calls it); faults are injected by wrapping one trainer method (a signal as a phase starts, metrics written to
/dev/full) or by damaging files. One trained run (`trained`) is copied for every case that resumes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.faults import trainer_cases
from tests.training import trainer_runs as cases
from vffn_pretrain.training.run_lock import CACHE_LOCK_NAME, LOCK_NAME, RunDirLocked, RunLock

STEP2, STEP4 = "step_0000002", "step_0000004"


@pytest.fixture(scope="module")
def overrides(synthetic_data, tmp_path_factory) -> list[str]:
    cache = tmp_path_factory.mktemp("cache")
    return [*cases.BASE, f"data.paths={synthetic_data}", f"data.cache_dir={cache}"]


@pytest.fixture(scope="module")
def trained(rank_pools, overrides, tmp_path_factory) -> Path:
    """A finished versatile run of 4 steps with checkpoints at steps 2 and 4 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    out = rank_pools(1).run(trainer_cases.run_as_the_cli_does, [*overrides, f"run_dir={run}", "train.max_steps=4",
                                                                "checkpoint.interval=2"])[0]
    assert out["exit_code"] == 0, out
    return run


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run, symlinks=True)
    return run


def _run(rank_pools, overrides, run, *extra, world=1, **kwargs) -> dict:
    return rank_pools(world).run(trainer_cases.run_as_the_cli_does, [*overrides, f"run_dir={run}", *extra],
                                 **kwargs)[0]


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ 1. no work, no rewrite
@pytest.mark.parametrize("max_steps", [4, 3])
def test_a_finished_run_run_again_leaves_every_result_as_it_was(max_steps, rank_pools, overrides, trained, tmp_path):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    out = _run(rank_pools, overrides, run, f"train.max_steps={max_steps}", "checkpoint.interval=2")
    assert out["exit_code"] == 0, out
    assert [line for line in out["said"] if "nothing to train" in line] == [
        f"vffn-pretrain: nothing to train: {run / 'checkpoints' / STEP4} is at step 4 and train.max_steps="
        f"{max_steps}; summary.json, metrics.jsonl and the checkpoints are left as they were (raise "
        "train.max_steps to train on)"]
    assert _snapshot(run) == before  # summary.json (final losses included), metrics, config.yaml, checkpoints
    assert json.loads((run / "summary.json").read_text())["final_train_loss"] is not None


def test_a_finished_run_without_its_summary_writes_it_without_training(rank_pools, overrides, trained, tmp_path):
    """Stopped after its last checkpoint, before its summary (kill -9 at the very end): run again, it evaluates the
    checkpoint and writes the summary it lacked, training no step and leaving the checkpoints as they were."""
    run = _copy(trained, tmp_path)
    original = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    checkpoints = {k: v for k, v in _snapshot(run).items() if k.startswith("checkpoints")}
    out = _run(rank_pools, overrides, run, "train.max_steps=4", "checkpoint.interval=2")
    assert out["exit_code"] == 0, out
    assert any("has no summary.json" in line and "no training" in line for line in out["said"]), out["said"]
    written = json.loads((run / "summary.json").read_text())
    assert written["steps"] == 4 and written["exit_code"] == 0
    assert written["final_val_loss"] == pytest.approx(original["final_val_loss"], rel=1e-6)  # the same model
    assert written["final_train_loss"] == original["final_train_loss"]  # from its metrics.jsonl: no step trained
    assert {k: v for k, v in _snapshot(run).items() if k.startswith("checkpoints")} == checkpoints


@pytest.mark.parametrize("code", [3, 1])
def test_a_run_stopped_during_its_final_evaluation_finishes_it_when_run_again(code, rank_pools, overrides, trained,
                                                                               tmp_path):
    """A SIGTERM (exit 3) or an error (exit 1) during the final evaluation leaves a summary.json of that exit and
    no final validation loss: running it again is not "nothing to train" but the evaluation and summary it lacks."""
    run = _copy(trained, tmp_path)
    original = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**original, "exit_code": code, "final_val_loss": None}))
    out = _run(rank_pools, overrides, run, "train.max_steps=4", "checkpoint.interval=2")
    assert out["exit_code"] == 0, out
    assert any(f"a run that ended with exit code {code} before it finished" in line and "no training" in line
               for line in out["said"]), out["said"]
    written = json.loads((run / "summary.json").read_text())
    assert written["exit_code"] == 0 and written["steps"] == 4
    assert written["final_val_loss"] == pytest.approx(original["final_val_loss"], rel=1e-6)


def test_a_stop_during_the_evaluation_of_a_run_without_summary_is_a_requeue(rank_pools, overrides, trained,
                                                                            tmp_path):
    """The evaluation a finished run without summary.json runs again, stopped by SIGTERM: exit 3 and a summary
    saying so (not exit 0 with no validation loss); the next run finishes it."""
    run = _copy(trained, tmp_path)
    (run / "summary.json").unlink()
    out = _run(rank_pools, overrides, run, "train.max_steps=4", "checkpoint.interval=2",
               patch={"evaluate": ("send_signal_first", "SIGTERM")})
    assert out["exit_code"] == 3, out
    assert json.loads((run / "summary.json").read_text())["exit_code"] == 3
    again = _run(rank_pools, overrides, run, "train.max_steps=4", "checkpoint.interval=2")
    assert again["exit_code"] == 0, again
    written = json.loads((run / "summary.json").read_text())
    assert written["exit_code"] == 0 and written["final_val_loss"] is not None
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")) == [STEP2, STEP4]


def test_a_summary_of_an_earlier_part_of_the_run_does_not_decide_its_end(rank_pools, overrides, trained, tmp_path):
    """summary.json of step 2 (a diverged first attempt, retried from an earlier checkpoint) beside a checkpoint at
    train.max_steps: not "nothing to train, exit 2" for good, but the end's evaluation and summary."""
    run = _copy(trained, tmp_path)
    original = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**original, "steps": 2, "exit_code": 2}))
    out = _run(rank_pools, overrides, run, "train.max_steps=4", "checkpoint.interval=2")
    assert out["exit_code"] == 0, out
    written = json.loads((run / "summary.json").read_text())
    assert written["steps"] == 4 and written["exit_code"] == 0


def test_a_run_finished_without_training_fails_on_a_nan_final_training_loss(rank_pools, overrides, trained,
                                                                             tmp_path):
    """Its last step was skipped as NaN and a stop came during the final evaluation: the run that finishes it
    reads the final training loss back from metrics.jsonl, and a NaN one fails the run there too."""
    run = _copy(trained, tmp_path)
    original = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**original, "exit_code": 3, "final_val_loss": None}))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r.get("step") == 4 and "loss" in r:
            r["loss"] = "nan"
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = _run(rank_pools, overrides, run, "train.max_steps=4", "checkpoint.interval=2")
    assert out["exit_code"] == 2, out
    assert any("the final training loss (step 4) is nan" in line for line in out["said"]), out["said"]
    written = json.loads((run / "summary.json").read_text())
    assert written["exit_code"] == 2 and written["final_train_loss"] == "nan"


def test_a_fresh_start_over_a_finished_runs_results_is_refused(rank_pools, overrides, trained, tmp_path):
    """run_dir holds a finished run's summary and metrics, checkpoint.dir (changed) holds no checkpoint: a fresh
    start there would replace the results; it is refused naming checkpoint.dir, every file as it was."""
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    elsewhere = tmp_path / "elsewhere"
    out = _run(rank_pools, overrides, run, "train.max_steps=4", f"checkpoint.dir={elsewhere}")
    assert out["exit_code"] == 2 and out["key"] == "checkpoint.dir", out
    assert "holds the results of a run that trained 4 steps" in out["error"]
    assert _snapshot(run) == before
    assert not elsewhere.exists()  # created for the start, removed with the refusal
    out = _run(rank_pools, overrides, run, "train.max_steps=4", f"checkpoint.dir={elsewhere}",
               "checkpoint.resume=false")  # asked not to resume: refused all the same, naming that key
    assert out["exit_code"] == 2 and out["key"] == "checkpoint.resume", out
    assert "start anew in another run_dir" in out["error"] and _snapshot(run) == before


def test_a_fresh_start_among_another_runs_checkpoints_is_refused(rank_pools, overrides, trained, tmp_path):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    out = _run(rank_pools, overrides, run, "train.max_steps=6", "checkpoint.resume=false")
    assert out["exit_code"] == 2 and out["key"] == "checkpoint.resume", out
    assert f"holds checkpoints of another run (newest {STEP4})" in out["error"]
    assert _snapshot(run) == before


# ------------------------------------------------------------------------------------ 3. one writer
def _hold_lock(directory: Path, pid: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "earlier"}))


def test_two_runs_with_one_checkpoint_dir_do_not_both_train(rank_pools, overrides, tmp_path):
    shared = tmp_path / "shared-checkpoints"
    _hold_lock(shared, os.getpid())  # a live trainer (this process stands in for it) owns the checkpoints
    out = _run(rank_pools, overrides, tmp_path / "second", "train.max_steps=2", f"checkpoint.dir={shared}")
    assert out["exit_code"] == 1, out
    assert f"{shared} is in use by PID {os.getpid()} on this host" in out["error"]
    assert "two trainers must not share a checkpoint.dir" in out["error"]
    assert not (tmp_path / "second").exists()  # it created its run_dir, then removed it: a refused start
    assert sorted(p.name for p in shared.iterdir()) == [LOCK_NAME]


def test_runs_sharing_a_data_cache_write_it_one_at_a_time(rank_pools, overrides, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    holder = open(cache / CACHE_LOCK_NAME, "w")  # noqa: SIM115 - another run writing the cache, released below
    fcntl.flock(holder, fcntl.LOCK_EX)
    holder.write("PID 4242 on elsewhere\n")
    holder.flush()
    threading.Timer(4.0, holder.close).start()
    started = time.monotonic()
    out = _run(rank_pools, overrides, tmp_path / "run", "train.max_steps=1", f"data.cache_dir={cache}")
    assert out["exit_code"] == 0, out
    assert f"waiting for PID 4242 on elsewhere to finish writing the data cache {cache}" in out["said"]
    assert time.monotonic() - started >= 4.0
    assert any((cache / "indices").glob("*.npy"))  # then it built its indices there


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock(tmp_path, monkeypatch):
    """An earlier run of this SLURM job held the lock on another node (it died with the node); SLURM runs a job
    once at a time, so the holder is gone. Another job's lock from another host is still refused."""
    lock_file = tmp_path / LOCK_NAME
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock_file.write_text(json.dumps({"host": "node-a", "pid": 1, "slurm_job": "777", "slurm_restart": "0"}))
    lock = RunLock(tmp_path, "checkpoint.dir")
    lock.acquire()
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    lock_file.write_text(json.dumps({"host": "node-a", "pid": 1, "slurm_job": "778", "slurm_restart": "0"}))
    with pytest.raises(RunDirLocked, match="in use by PID 1 on host node-a"):
        RunLock(tmp_path, "checkpoint.dir").acquire()


def test_a_sample_index_cut_off_by_a_kill_is_built_again(rank_pools, overrides, tmp_path):
    """kill -9 while megatron-core writes a sample index (it writes in place) leaves a torn .npy that it would take
    for a cache hit; the next run removes it, under the cache's writer lock, and builds it again."""
    cache = tmp_path / "cache"
    first = _run(rank_pools, overrides, tmp_path / "a", "train.max_steps=1", f"data.cache_dir={cache}")
    assert first["exit_code"] == 0, first
    torn = sorted((cache / "indices").glob("*-sample_index.npy"))[0]
    torn.write_bytes(torn.read_bytes()[:150])
    out = _run(rank_pools, overrides, tmp_path / "b", "train.max_steps=1", f"data.cache_dir={cache}")
    assert out["exit_code"] == 0, out
    assert f"removed {torn}, a sample index cut off while being written; it is built again" in out["warnings"]
    assert cases.read_losses(tmp_path / "b") == cases.read_losses(tmp_path / "a")  # the same samples


# ------------------------------------------------------------------------------------ 4. the same model
@pytest.mark.parametrize("extra, named", [
    (["ffn=width_only"], "ffn.kind: 'versatile' -> 'width_only'"),  # its weights are a subset: it would load
    (["ffn.max_loops=2"], "ffn.max_loops: 4 -> 2"),
    (["ffn.top_k=1"], "ffn.top_k: 2 -> 1"),
    (["model.rotary_base=500000"], "model.rotary_base: 10000 -> 500000"),
    (["ffn.blend_in_steps=100"], "ffn.blend_in_steps: 0 -> 100"),  # the layer's output until step 100
    (["ffn.layers='dense,versatile,versatile,versatile'"],
     "ffn.layers: ['versatile', 'versatile', 'versatile', 'versatile'] -> ['dense', 'versatile', 'versatile', "
     "'versatile']"),
])
def test_a_resume_with_another_model_is_refused_naming_the_key(extra, named, rank_pools, overrides, trained,
                                                                 tmp_path):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    out = _run(rank_pools, overrides, run, "train.max_steps=6", *extra)
    assert out["exit_code"] == 2 and out["key"] == "model", out
    assert named in out["error"] and "checkpoint.allow_model_change=true" in out["error"]
    assert out["error"].count("->") == 1  # only the key that changed
    assert _snapshot(run) == before


def test_keys_that_do_not_change_the_model_resume(rank_pools, overrides, trained, tmp_path):
    # ffn.loops is the k-loop kind's: a versatile model does not read it; tau0 is a training schedule.
    run = _copy(trained, tmp_path)
    # model.num_query_groups equal to the heads is what unset means: multi-head attention, the same model.
    heads = next(o.split("=")[1] for o in overrides if o.startswith("model.num_attention_heads="))
    # A conversion ramp over by the checkpoint's step (4) in both configs changes nothing any more.
    out = _run(rank_pools, overrides, run, "train.max_steps=5", "ffn.loops=2", "ffn.tau0=3.0", "train.lr=1e-3",
               f"model.num_query_groups={heads}", "ffn.blend_in_steps=3")
    assert out["exit_code"] == 0, out
    assert out["step"] == 5 and not any("another model" in w for w in out["warnings"])


def test_allow_model_change_loads_the_shared_weights(rank_pools, overrides, trained, tmp_path):
    run = _copy(trained, tmp_path)
    out = _run(rank_pools, overrides, run, "train.max_steps=5", "ffn=width_only", "checkpoint.allow_model_change=true")
    assert out["exit_code"] == 0, out
    assert out["step"] == 5
    assert any("resuming a checkpoint of another model (ffn.kind: 'versatile' -> 'width_only')" in w
               for w in out["warnings"]), out["warnings"]


def test_a_resume_with_other_data_warns_and_counts_tokens_right(rank_pools, overrides, trained, tmp_path):
    run = _copy(trained, tmp_path)
    out = _run(rank_pools, overrides, run, "train.max_steps=6", "train.seq_length=16")
    assert out["exit_code"] == 0, out
    assert any("other data than the checkpoint's run (train.seq_length: 32 -> 16)" in w for w in out["warnings"])
    assert out["summary"]["tokens"] == 4 * 8 * 32 + 2 * 8 * 16  # 4 steps of 8 x 32, then 2 of 8 x 16
    last = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r][-1]
    assert last["step"] == 6 and last["consumed_tokens"] == 4 * 8 * 32 + 2 * 8 * 16


def test_init_from_a_checkpoint_of_another_kind_and_size_names_the_keys(rank_pools, overrides, trained, tmp_path):
    out = _run(rank_pools, overrides, tmp_path / "run", "train.max_steps=2", "ffn=versatile",
               f"train.init_from={trained / 'checkpoints'}", "model.hidden_size=128")
    assert out["exit_code"] == 2 and out["key"] == "train.init_from", out
    assert "ffn.kind: 'versatile' (a dense checkpoint is needed)" in out["error"]
    assert "model.hidden_size: 64 -> 128" in out["error"]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ 5. signals at every phase
SETUP_PHASES = [
    ("_take_directories", "SIGTERM", "set-up (taking the run directories)", 3),
    ("_build_data", "SIGUSR1", "set-up (building the datasets)", 3),
    pytest.param("_build_model", "SIGHUP", "set-up (building the model)", 3, marks=pytest.mark.skipif(
        signal.getsignal(signal.SIGHUP) == signal.SIG_IGN, reason="under nohup the trainer leaves SIGHUP ignored")),
    ("_build_data", "SIGINT", "set-up (building the datasets)", 130),
]


@pytest.mark.parametrize("method, signame, phase, code", SETUP_PHASES,
                         ids=["SIGTERM-dirs", "SIGUSR1-data", "SIGHUP-model", "SIGINT-data"])
def test_a_signal_during_set_up_stops_with_one_line(method, signame, phase, code, rank_pools, overrides, tmp_path):
    out = _run(rank_pools, overrides, tmp_path / "run", "train.max_steps=2",
               patch={method: ("send_signal_first", signame)})
    assert out["exit_code"] == code, out
    assert out["error"].startswith(f"{signame} during {phase}: stopped before training; nothing new to save")
    assert not (tmp_path / "run").exists()  # a run that never started leaves nothing (no config.yaml)


def test_a_signal_while_loading_a_checkpoint_requeues_and_keeps_it(rank_pools, overrides, trained, tmp_path):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    out = _run(rank_pools, overrides, run, "train.max_steps=6", patch={"_resume": ("send_signal_first", "SIGTERM")})
    assert out["exit_code"] == 3, out
    assert out["error"].startswith("SIGTERM during set-up (loading a checkpoint): stopped before training")
    assert _snapshot(run) == before
    assert not (run / "checkpoints" / LOCK_NAME).exists() and not (run / LOCK_NAME).exists()


def test_a_signal_during_a_save_finishes_it_then_requeues(rank_pools, overrides, tmp_path):
    run = tmp_path / "run"
    out = _run(rank_pools, overrides, run, "train.max_steps=6", "checkpoint.interval=2",
               patch={"save": ("send_signal_first", "SIGUSR1")})
    assert out["exit_code"] == 3 and out["step"] == 2, out
    assert (run / "checkpoints" / "latest").read_text().strip() == STEP2
    assert any("SIGUSR1 received: saved" in line for line in out["said"])


def test_a_signal_during_evaluation_abandons_it_then_saves_and_requeues(rank_pools, overrides, tmp_path):
    run = tmp_path / "run"
    out = _run(rank_pools, overrides, run, "train.max_steps=6", "train.eval_interval=2", "train.eval_iters=50",
               patch={"evaluate": ("send_signal_first", "SIGTERM")})
    assert out["exit_code"] == 3 and out["step"] == 2, out
    assert (run / "checkpoints" / "latest").read_text().strip() == STEP2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if "val_loss" in r]  # the abandoned evaluation left no record
    assert json.loads((run / "summary.json").read_text())["exit_code"] == 3


def test_a_signal_while_finishing_leaves_the_outcome(rank_pools, overrides, tmp_path):
    run = tmp_path / "run"
    out = _run(rank_pools, overrides, run, "train.max_steps=2", patch={"finish": ("send_signal_first", "SIGTERM")})
    assert out["exit_code"] == 0, out
    assert "SIGTERM received while finishing; the run's exit code stands" in out["stderr"]
    assert json.loads((run / "summary.json").read_text())["exit_code"] == 0


@pytest.mark.parametrize("signame, code", [("SIGTERM", 3), ("SIGINT", 130)])
def test_a_signal_during_start_up_is_one_line_not_a_silent_death(signame, code, overrides, tmp_path):
    proc = cases.train_subprocess([*overrides, f"run_dir={tmp_path / 'run'}"], wait=False)
    deadline = time.monotonic() + 30
    while not _catches(proc.proc.pid, signal.SIGTERM):  # its handler is in place: it is importing torch now
        assert proc.poll() is None and time.monotonic() < deadline, proc.output[-2000:]
        time.sleep(0.02)
    proc.send_signal(getattr(signal, signame))
    done = proc.wait(timeout=60)
    assert done.returncode == code, done.stdout[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vffn-pretrain: {signame} during start-up"), done.stdout[-2000:]
    assert not (tmp_path / "run").exists()


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (sig - 1) & 1)


# ------------------------------------------------------------------------------------ 6. no false success
def test_a_run_in_which_no_step_succeeded_fails(rank_pools, overrides, tmp_path):
    run = tmp_path / "run"
    out = _run(rank_pools, overrides, run, "train.max_steps=3", "train.max_skipped_steps=5", nan_steps=(1, 2, 3))
    assert out["exit_code"] == 2, out
    assert any(line.startswith("error: no optimizer step succeeded in steps 1-3") for line in out["said"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exit_code"] == 2 and summary["final_train_loss"] == "nan"  # the last step's loss
    # Run again, it has nothing to train; it must not turn into a success either.
    before = _snapshot(run)
    again = _run(rank_pools, overrides, run, "train.max_steps=3", "train.max_skipped_steps=5")
    assert again["exit_code"] == 2, again
    assert any("(it did not succeed: its summary.json says exit code 2;" in line for line in again["said"]), again
    assert _snapshot(run) == before


def test_a_run_whose_last_steps_were_skipped_fails(rank_pools, overrides, tmp_path):
    """Step 1 trains, steps 2-3 are NaN and skipped (fewer than train.max_skipped_steps): the final training loss
    is NaN, not step 1's loss passed off as the final one, and the run did not succeed."""
    run = tmp_path / "run"
    out = _run(rank_pools, overrides, run, "train.max_steps=3", "train.max_skipped_steps=5", nan_steps=(2, 3))
    assert out["exit_code"] == 2, out
    assert any(line.startswith("error: the final training loss (step 3) is nan: the last step was skipped")
               for line in out["said"]), out["said"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exit_code"] == 2 and summary["final_train_loss"] == "nan"


def test_a_part_of_a_run_ending_on_a_skipped_step_is_no_failure(rank_pools, overrides, tmp_path):
    """train.exit_interval ends a part of the run at step 2, which was skipped as NaN: a skipped step mid-run is
    what train.max_skipped_steps tolerates, so the part ends 0 (a chain of jobs goes on), not 2."""
    run = tmp_path / "run"
    out = _run(rank_pools, overrides, run, "train.max_steps=4", "train.exit_interval=2", "train.max_skipped_steps=5",
               nan_steps=(2,))
    assert out["exit_code"] == 0 and out["step"] == 2, out


def test_a_run_whose_final_validation_loss_is_not_finite_fails(rank_pools, overrides, tmp_path):
    run = tmp_path / "run"
    out = _run(rank_pools, overrides, run, "train.max_steps=2", "train.eval_interval=2", nan_steps=(0,))
    assert out["exit_code"] == 2, out
    assert any("the final validation loss at step 2 is nan" in line for line in out["said"])
    summary = json.loads((run / "summary.json").read_text())  # valid JSON: NaN written as a string
    assert summary["exit_code"] == 2 and summary["final_val_loss"] == "nan"


# ------------------------------------------------------------------------------------ 7. damaged checkpoints
def _damage_common(path: Path) -> None:
    (path / "common.pt").write_bytes(b"garbage")


def _drop_step_from_common(path: Path) -> None:
    state = torch.load(path / "common.pt", weights_only=False)
    del state["common"]["step"]
    torch.save(state, path / "common.pt")


def _truncate_shards(path: Path) -> None:
    for f in path.glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:1000])


def _drop_optimizer_state(path: Path) -> None:
    with open(path / ".metadata", "rb") as f:
        metadata = pickle.load(f)
    metadata.state_dict_metadata = {k: v for k, v in metadata.state_dict_metadata.items()
                                    if not k.startswith("optimizer")}
    with open(path / ".metadata", "wb") as f:
        pickle.dump(metadata, f)


def _damage_rng(path: Path) -> None:
    (path / "rng" / "rank_00000.pt").write_bytes(b"\x80\x04not a pickle")


def _damage_loop_stats(path: Path) -> None:
    (path / "loop_stats.json").write_text('{"step": 4, "loop_')


DAMAGE = {"common-state": _damage_common, "common-state-without-step": _drop_step_from_common,
          "shards": _truncate_shards, "optimizer": _drop_optimizer_state, "rng": _damage_rng,
          "loop-stats": _damage_loop_stats, "metadata-gone": lambda p: (p / ".metadata").unlink()}


@pytest.mark.parametrize("piece", list(DAMAGE))
def test_any_damaged_piece_of_the_newest_checkpoint_falls_back(piece, rank_pools, overrides, trained, tmp_path):
    run = _copy(trained, tmp_path)
    DAMAGE[piece](run / "checkpoints" / STEP4)
    out = _run(rank_pools, overrides, run, "train.max_steps=2")  # resume only: step 2 is then the end
    assert out["exit_code"] == 0, out
    failed = [w for w in out["warnings"] if w.startswith(f"checkpoint {run / 'checkpoints' / STEP4} failed to load")]
    assert len(failed) == 1 and failed[0].endswith("; trying the previous one"), out["warnings"]
    assert any(f"{STEP2} is at step 2" in line for line in out["said"]), out["said"]


def test_no_loadable_checkpoint_is_one_line_naming_checkpoint_dir(rank_pools, overrides, trained, tmp_path):
    run = _copy(trained, tmp_path)
    _damage_common(run / "checkpoints" / STEP4)
    _truncate_shards(run / "checkpoints" / STEP2)
    out = _run(rank_pools, overrides, run, "train.max_steps=6")
    assert out["exit_code"] == 2 and out["key"] == "checkpoint.dir", out
    assert out["error"].startswith(f"config key `checkpoint.dir`: no checkpoint in {run / 'checkpoints'} could be "
                                   f"loaded ({STEP4}: ")
    assert f"; {STEP2}: " in out["error"] and "\n" not in out["error"]


def test_rank_0_alone_chooses_the_checkpoint_to_resume(rank_pools, overrides, tmp_path):
    """gpu-review-2 N7: rank 1's listing of checkpoint.dir lacks the newest checkpoint (a stale NFS cache); both
    ranks resume rank 0's choice."""
    run = tmp_path / "run"
    first = _run(rank_pools, overrides, run, "train.max_steps=4", "checkpoint.interval=2", world=2)
    assert first["exit_code"] == 0, first
    out = rank_pools(2).run(trainer_cases.resume_with_stale_listing,
                            [*overrides, f"run_dir={run}", "train.max_steps=4"], 1, timeout_s=240)
    assert [o["exit_code"] for o in out] == [0, 0], out
    assert [o["step"] for o in out] == [4, 4]


# ------------------------------------------------------------------------------------ 8. storage
@pytest.mark.parametrize("errno_name, said", [("ENOSPC", "the disk is full: "), ("EROFS", "")])
def test_a_data_cache_that_cannot_take_the_indices_is_one_line_naming_it(errno_name, said, rank_pools, overrides,
                                                                         tmp_path):
    """megatron-core wraps a failed write of its sample indices in a bare Exception: a traceback before. Now the
    one line of a config error naming data.cache_dir and the file, nothing left behind."""
    out = _run(rank_pools, overrides, tmp_path / "run", "train.max_steps=2",
               patch={"_build_datasets": ("index_write_failing", errno_name)})
    assert out["exit_code"] == 2 and out["key"] == "data.cache_dir", out
    assert f"`data.cache_dir`: {said}/" in out["error"] and "0123-document_index.npy cannot be written" in \
        out["error"], out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["metrics", "console"])
def test_a_full_disk_while_logging_saves_stops_and_says_so(where, rank_pools, overrides, tmp_path):
    run = tmp_path / "run"
    patch = ({"log_step": ("metrics_to_a_full_disk_at", 2)} if where == "metrics"
             else {"_start_fit": ("console_to_a_full_disk",)})
    out = _run(rank_pools, overrides, run, "train.max_steps=6", patch=patch)
    assert out["exit_code"] == 1, out
    stopped = out["step"]
    lines = [line for line in out["stderr"].splitlines() if line.startswith("vffn-pretrain: error:")]
    assert lines[0] == "vffn-pretrain: error: the disk is full: /dev/full: [Errno 28] No space left on device"
    assert lines[1] == (f"vffn-pretrain: error: stopped at step {stopped}: the disk is full: /dev/full: [Errno 28] "
                        f"No space left on device; last good checkpoint: {run / 'checkpoints' / f'step_{stopped:07d}'}"
                        "; free space and run the same command to resume")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exit_code"] == 1 and summary["steps"] == stopped < 6


def test_a_metrics_record_cut_off_by_a_kill_is_dropped_on_resume(tmp_path):
    """kill -9 (or a full disk) in the middle of appending a record leaves a partial last line: a resumed run
    drops it with the records after its checkpoint, so the file stays one JSON object per line."""
    from vffn_pretrain.training.callbacks.metrics_file import MetricsFile

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n{"step": 3, "lo')
    assert MetricsFile(path).drop_after(2) == 1
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
