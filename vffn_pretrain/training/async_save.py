"""Checkpoint writes in the background (`checkpoint.async_save`), by megatron-core's writer.

A background save has three parts:

1. Staging (blocks training; collective; `CheckpointManager.save`): the save plan, the common state and the
   per-rank RNG files are written, and megatron-core's `AsyncCallsQueue` forks a writer process. The fork is the
   snapshot: the writer sees the state as it was at the fork (its pages are copy-on-write; on a GPU the tensors
   are copied to host memory first), so training may change the weights at once. The price is memory: pages
   that training rewrites while the write is in flight exist twice, up to the trainer's CPU memory once more.
2. The write: the writer process (and the per-file processes it forks) write this rank's files while training
   goes on.
3. Finalisation (collective, at a step boundary once every rank's writer has ended): megatron-core gathers every
   rank's write results, writes the checkpoint's metadata and raises on every rank if any rank failed; then the
   manager's `commit` (the rename into place, `latest`, pruning) runs. A checkpoint is therefore complete only
   once every rank has written it.

At most one write is in flight: the manager finalises it before the next save. Every call here is collective
(all ranks, same order), except `every_rank_stops`.

Why the forked writer and not megatron-core's persistent one (`AsyncCallsQueue(persistent=True)`): that worker is
spawned and receives the tensors through a queue, in shared memory, and on a CPU those are the live tensors that
training changes during the write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch.distributed as dist
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from vffn_pretrain.training.faults import FAULTS

# A writer's failure reaches the trainer, which reports it in one line; megatron-core's writer would log it too.
logging.getLogger("megatron.core.dist_checkpointing.strategies.filesystem_async").setLevel(logging.CRITICAL)

# How often `wait()` asks every rank whether its write has ended (one small all-reduce each time).
WAIT_POLL_S = 0.05
# How long a rank stopping on an error waits for the others to stop on one too (`every_rank_stops`).
ERROR_AGREEMENT_S = 60.0


class BackgroundWriteError(RuntimeError):
    """The write of checkpoint `step` failed on some rank (raised on every rank). `cause`: megatron-core's error;
    `writer_fate`: how this rank's writer process ended when that was not normally (killed by a signal, say)."""

    def __init__(self, step: int, cause: BaseException, writer_fate: str | None):
        super().__init__(writer_fate or str(cause))
        self.step, self.cause, self.writer_fate = step, cause, writer_fate


@dataclass
class FinishedWrite:
    """A background write that every rank finished and that was committed."""

    step: int
    blocking_s: float  # training time it took: staging, waiting for the write, finalising
    write_s: float  # from the end of staging until every rank's files and the metadata were written


@dataclass
class _InFlight:
    step: int
    blocking_s: float
    staged_at: float
    process: object | None  # this rank's writer (a multiprocessing.Process), None when it has nothing to write
    written_at: float | None = None
    fate: str | None = None  # why this rank's writer was stopped, if it was


class BackgroundWriter:
    """Runs megatron-core `AsyncRequest`s for checkpoint saves, one at a time."""

    def __init__(self):
        """Collective (creates a process group)."""
        self._calls = AsyncCallsQueue(persistent=False)
        self._in_flight: _InFlight | None = None
        # Used only by ranks that stop on an error, so that its barrier never meets a training collective; gloo,
        # whose barrier takes a timeout, whatever the training backend.
        self._error_group = dist.new_group(backend="gloo")

    @property
    def step(self) -> int | None:
        """The step of the checkpoint being written, None when no write is in flight."""
        return self._in_flight.step if self._in_flight else None

    def start(self, step: int, request: AsyncRequest, commit: Callable[[], None], staging_s: float) -> None:
        """Collective: hand `request` (from `dist_ckpt.save(..., background=True)`) to a forked writer process;
        `commit` runs (collectively) once every rank's write is finalised. `staging_s`: the time the save took so
        far. The test hooks of `faults.FAULTS` for this step are applied here."""
        assert self._in_flight is None, "finalise the write in flight first"
        request = _with_faults(request, step)
        in_flight = _InFlight(step, staging_s, 0.0, None)
        request.add_finalize_fn(lambda: setattr(in_flight, "written_at", time.perf_counter()))
        request.add_finalize_fn(commit)
        start = time.perf_counter()
        self._calls.schedule_async_request(request)
        in_flight.process = getattr(self._calls.async_calls[-1].async_caller, "process", None)
        in_flight.staged_at = time.perf_counter()
        in_flight.blocking_s += in_flight.staged_at - start
        self._in_flight = in_flight

    def poll(self) -> FinishedWrite | None:
        """Collective: finalise the write in flight if every rank's writer has ended; None if none has finished.
        Raises BackgroundWriteError (on every rank) if it failed."""
        return self._finalise(wait=False)

    def wait(self) -> FinishedWrite | None:
        """Collective: block until the write in flight is finalised (None if there was none)."""
        return self._finalise(wait=True)

    def every_rank_stops(self, timeout_s: float = ERROR_AGREEMENT_S) -> bool:
        """Called by the ranks that stop on an error: whether every rank does so within `timeout_s` (an error
        that every rank hit, like an evaluation that raises). Only then may they go on to `wait()`: a rank that
        is still training would never join it."""
        try:
            dist.monitored_barrier(group=self._error_group, timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
        except RuntimeError:  # a rank did not come: it is still training, or gone
            return False
        return True

    def abort(self) -> None:
        """Local: kill this rank's writer, if any (after a save that failed while staging on some rank)."""
        if self._in_flight is not None:
            _kill(self._in_flight.process)
            self._calls = AsyncCallsQueue(persistent=False)
            self._in_flight = None

    def _finalise(self, wait: bool) -> FinishedWrite | None:
        in_flight = self._in_flight
        if in_flight is None:
            return None
        start = time.perf_counter()
        try:
            while True:
                in_flight.fate = _stop_if_stuck(in_flight.process) or in_flight.fate
                # Non-blocking, so that a writer stuck for good is still noticed (above); each call is one
                # all-reduce on every rank, so all ranks leave this loop together.
                if self._calls.maybe_finalize_async_calls(blocking=False):
                    break
                if not wait:
                    in_flight.blocking_s += time.perf_counter() - start
                    return None
                time.sleep(WAIT_POLL_S)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - megatron raises it on every rank
            self._in_flight = None
            raise BackgroundWriteError(in_flight.step, e, in_flight.fate or _writer_fate(in_flight.process)) from e
        self._in_flight = None
        done = time.perf_counter()
        written_at = in_flight.written_at or done
        return FinishedWrite(in_flight.step, in_flight.blocking_s + done - start, written_at - in_flight.staged_at)


def _writer_fate(process) -> str | None:
    """`the background writer (PID n) was killed by signal 9` when this rank's writer did not end normally."""
    code = getattr(process, "exitcode", None)
    if not code:
        return None
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"the background writer (PID {process.pid}) {how}"


def _stop_if_stuck(process) -> str | None:
    """Kill this rank's writer when one of the processes it forked (one per file) died abnormally, and say so:
    megatron-core's writer would wait for that process's result for ever."""
    if process is None or not process.is_alive():
        return None
    for child in _children(process.pid):
        status = _zombie_exit_status(child)
        if status:  # a killed or failed file writer that its parent has not reaped
            _kill(process)
            how = f"was killed by signal {status & 0x7F}" if status & 0x7F else f"exited with code {status >> 8}"
            return f"a file writer (PID {child}) of the background writer (PID {process.pid}) {how}"
    return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:  # no /proc (macOS), or the process is gone
        return []


def _zombie_exit_status(pid: int) -> int:
    """The wait status of a zombie process (Linux /proc/PID/stat field 52), 0 for a live or vanished one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[-1]) if fields[0] == "Z" and len(fields) >= 50 else 0


def _kill(process) -> None:
    if process is not None and process.is_alive():
        process.kill()
        process.join()


# ------------------------------------------------------------------------------------------------ test hooks
def _with_faults(request: AsyncRequest, step: int) -> AsyncRequest:
    """`FAULTS.slow_write`: the writer of `step` waits that many seconds before writing. `FAULTS.enospc_in_save`:
    one file of `step` is written to /dev/full, which fails with ENOSPC (a full disk) inside the writer."""
    if request.async_fn is None:
        return request
    pause = FAULTS.slow_write.get(step)
    if pause:
        request = request._replace(async_fn=partial(_after_pause, pause, request.async_fn))
    if FAULTS.enospc_in_save == step and request.preload_fn is not None:
        request = request._replace(preload_fn=partial(_first_file_to_dev_full, request.preload_fn))
    return request


def _after_pause(seconds: float, write, *args, **kwargs):
    time.sleep(seconds)
    return write(*args, **kwargs)


def _first_file_to_dev_full(preload):
    buckets = preload()
    _, storage_key, data = buckets[0]
    return [(str(Path("/dev/full")), storage_key, data), *buckets[1:]]
