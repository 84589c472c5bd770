"""checkpoint.async_save: training goes on while a checkpoint is written, and the result is the synchronous one.

A run saves step 1 (or 2) in the background while the writer is held back (`FAULTS.slow_write`), so the next step
trains while it is written; the checkpoint must hold the weights and optimizer state of its own step, bit for bit
those of a synchronous run, and a run resumed from the background-written checkpoints must compute the same losses
and end with the same weights. The checkpoint's tensors are read back by torch's own checkpoint reader.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time

import numpy as np
import torch.distributed as dist

from tests.faults import trainer_cases
from tests.faults.processes import children
from tests.training import trainer_runs as cases
from vffn_pretrain.training import async_save


def _args(base_overrides, run_dir, *extra):
    return [*base_overrides, f"run_dir={run_dir}", *extra]


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _saves(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in _records(run_dir) if "checkpoint" in r}


def _written_while_training(run_dir, step: int) -> bool:
    """Whether training logged a later step before checkpoint `step` was complete (metrics.jsonl is in order)."""
    order = [(r["step"], "checkpoint" in r) for r in _records(run_dir) if "loss" in r or "checkpoint" in r]
    done = order.index((step, True))
    return any(s > step and not is_save for s, is_save in order[:done])


def _async_then_resume(pool, base_overrides, tmp_path, layout: list[str],
                       async_extra: tuple = ()) -> tuple[dict, dict, dict]:
    """Run S: synchronous saves at every step, 3 steps. Run A: the same with async_save, the write of step 1 held
    back while step 2 trains, stopping after step 2 (its step-1 checkpoint is compared with S's here); run B
    resumes A to step 3. Returns (S, A, B) results."""
    common = ["train.max_steps=3", "checkpoint.interval=1", *layout]
    sync = pool.run(cases.train, _args(base_overrides, tmp_path / "sync", *common))[0]
    background = [*common, "checkpoint.async_save=true", *async_extra]
    first = pool.run(trainer_cases.train_with_faults,
                     _args(base_overrides, tmp_path / "async", *background, "train.exit_interval=2"),
                     {"slow_write": {1: 1.5}})[0]
    assert (first["exit_code"], first["summary"]["steps"]) == (0, 2)
    assert _written_while_training(tmp_path / "async", 1)  # the case under test: step 2 trained during the write
    # The background-written checkpoint holds its own step's state, not the state training reached meanwhile.
    cases.assert_same_tensors(cases.checkpoint_tensors(tmp_path / "async" / "checkpoints" / "step_0000001"),
                              cases.checkpoint_tensors(tmp_path / "sync" / "checkpoints" / "step_0000001"))
    # The last step's write is held back too: the final evaluation must wait for it.
    second = pool.run(trainer_cases.train_with_faults, _args(base_overrides, tmp_path / "async", *background),
                      {"slow_write": {3: 0.5}})[0]
    return sync, first, second


def _check_bitwise(tmp_path, sync, second) -> None:
    assert (second["exit_code"], second["summary"]["steps"]) == (0, 3)
    async_dir, sync_dir = tmp_path / "async", tmp_path / "sync"
    resumed = cases.read_losses(async_dir)
    assert [resumed[s] for s in (1, 2, 3)] == [sync["losses"][s] for s in (1, 2, 3)]  # bitwise
    cases.assert_same_tensors(cases.checkpoint_tensors(async_dir / "checkpoints" / "step_0000003"),
                              cases.checkpoint_tensors(sync_dir / "checkpoints" / "step_0000003"))
    # The run's last checkpoint was complete before its last evaluation.
    last = [r for r in _records(async_dir) if r["step"] == 3]
    assert ["checkpoint" in r for r in last] == [False, True, False] and "val_loss" in last[2], last


def test_async_save_at_one_rank_resumes_bitwise_like_a_synchronous_save(rank_pools, base_overrides, tmp_path):
    sync, _, second = _async_then_resume(rank_pools(1), base_overrides, tmp_path, [],
                                        async_extra=("checkpoint.keep=2",))
    _check_bitwise(tmp_path, sync, second)
    # checkpoint.keep holds for background saves too; `latest` names the newest.
    ckpts = tmp_path / "async" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000002", "step_0000003"]
    assert (ckpts / "latest").read_text().strip() == "step_0000003"
    # One record per save: the training time it blocked, and (background saves) the time the write took.
    saves, sync_saves = _saves(tmp_path / "async"), _saves(tmp_path / "sync")
    assert sorted(saves) == [1, 2, 3] and sorted(sync_saves) == [1, 2, 3]
    assert saves[1]["checkpoint"] == str(ckpts / "step_0000001")
    assert all(r["checkpoint_blocking_s"] > 0 and r["checkpoint_write_s"] > 0 for r in saves.values())
    assert saves[1]["checkpoint_write_s"] >= 1.5  # held back 1.5 s
    assert all(r["checkpoint_blocking_s"] > 0 and r["checkpoint_write_s"] is None for r in sync_saves.values())


def test_async_save_at_tp2_pp2_with_the_distributed_optimizer_resumes_bitwise_and_reshards(
        rank_pools, base_overrides, tmp_path):
    layout = ["parallel.tp=2", "parallel.pp=2", "parallel.distributed_optimizer=true"]
    sync, _, second = _async_then_resume(rank_pools(4), base_overrides, tmp_path, layout)
    _check_bitwise(tmp_path, sync, second)
    # Resharding on load: the background-written step-2 checkpoint continues at one rank.
    shutil.copytree(tmp_path / "async" / "checkpoints" / "step_0000002",
                    tmp_path / "single" / "checkpoints" / "step_0000002")
    single = rank_pools(1).run(cases.train, _args(base_overrides, tmp_path / "single", "train.max_steps=3",
                                                  "checkpoint.interval=1000", "parallel.distributed_optimizer=true"))[0]
    assert single["summary"]["steps"] == 3
    np.testing.assert_allclose(single["losses"][3], sync["losses"][3], rtol=1e-5)


def test_a_failing_evaluation_does_not_cost_the_checkpoint_being_written(rank_pools, base_overrides, tmp_path):
    # The save of step 2 is in flight (held back 1 s) when the evaluation of step 2 raises on every rank.
    out = rank_pools(1).run(trainer_cases.train_with_failing_eval,
                            _args(base_overrides, tmp_path / "run", "train.max_steps=4", "train.eval_interval=2",
                                  "checkpoint.interval=2", "checkpoint.async_save=true"),
                            {"slow_write": {2: 1.0}})[0]
    assert out["raised"] == "evaluation exploded"
    assert out["checkpoints"] == ["step_0000002"]


def _fork_and_hang() -> None:
    """A stand-in for megatron-core's writer: forks a file writer, then waits for its result for ever."""
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
    time.sleep(600)


def test_a_writer_whose_file_writer_died_is_stopped_not_waited_for(tmp_path):
    writer = multiprocessing.get_context("fork").Process(target=_fork_and_hang)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while not children(writer.pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (file_writer,) = children(writer.pid)
        assert async_save._stop_if_stuck(writer) is None  # busy, not stuck
        os.kill(file_writer, signal.SIGKILL)
        while async_save._zombie_exit_status(file_writer) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert async_save._stop_if_stuck(writer) == (f"a file writer (PID {file_writer}) of the background writer "
                                                     f"(PID {writer.pid}) was killed by signal 9")
        assert not writer.is_alive()
    finally:
        writer.kill()
        writer.join()


def every_rank_stops(asking: list[int], timeout_s: float) -> bool | None:
    """On every rank of a pool: the ranks in `asking` stop on an error; the others go on (None)."""
    writer = async_save.BackgroundWriter()
    return writer.every_rank_stops(timeout_s) if dist.get_rank() in asking else None


def test_a_checkpoint_is_finished_after_an_error_only_when_every_rank_stops(rank_pools):
    assert rank_pools(2).run(every_rank_stops, [0, 1], 30.0) == [True, True]
    start = time.monotonic()
    assert rank_pools(2).run(every_rank_stops, [1], 2.0) == [None, False]  # rank 0 is still training
    assert rank_pools(2).run(every_rank_stops, [0], 2.0) == [False, None]
    assert time.monotonic() - start < 60


def test_the_checkpoint_writers_manager_survives_the_stop_signals():
    """SLURM signals every process of a job step; the trainer saves on that signal, through this manager."""
    from vffn_pretrain.training import dist_ckpt

    manager = dist_ckpt.results_manager()
    try:
        queue = manager.Queue()
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
            os.kill(manager._process.pid, sig)
        time.sleep(0.5)
        queue.put("written")
        assert queue.get(timeout=10) == "written"
    finally:
        manager.shutdown()
