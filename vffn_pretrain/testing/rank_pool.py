"""A pool of N gloo ranks on 127.0.0.1, started once and reused for many test cases.

Starting torchrun per test costs 5-10 s on two cores; a pool pays that once. `pool.run(fn, *args)` calls the
module-level function `fn(*args, **kwargs)` on every rank (each rank in its own process, the world's process
group already initialised, megatron-core's CPU shims active) and returns the per-rank results in rank order.
Each case sets up its own model parallelism (`setup_model_parallel`), so one pool serves every layout of its
world size.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import time
import traceback
from typing import Any


class RankPoolError(RuntimeError):
    pass


# A rank with more threads than this is replaced (its world restarted) before the next job: a safety net. Each
# gloo group has a thread that wakes many times a second, and groups that outlive their use (held by a cache, a
# reference cycle, a job that never tore its parallel state down) once piled up to hundreds per pool rank and
# took most of a 2-core machine from the tests running meanwhile. A fresh rank has about 10 threads, one set-up
# adds about 20; a restart costs a few seconds.
MAX_RANK_THREADS = 100


def _worker(rank: int, world_size: int, port: int, jobs, results, env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from vffn_pretrain.parallel.init import init_distributed

    try:
        init_distributed(timeout_s=float(env.get("VFFN_TEST_DIST_TIMEOUT", "120")))
        results.put((rank, "ready", None))
    except Exception:  # noqa: BLE001 - reported to the parent
        results.put((rank, "error", traceback.format_exc()))
        return
    while True:
        job = jobs.get()
        if job is None:
            break
        module, name, args, kwargs = job
        try:
            fn = getattr(importlib.import_module(module), name)
            results.put((rank, "ok", fn(*args, **kwargs)))
        except Exception:  # noqa: BLE001 - reported to the parent
            results.put((rank, "error", traceback.format_exc()))
        _release_idle_groups()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _release_idle_groups() -> None:
    """Between jobs a rank keeps no process group it no longer uses (why: `release_process_groups`). Groups are
    released once the job has torn down megatron's parallel state; a job that leaves it set up may be followed by
    one that uses it."""
    from megatron.core import parallel_state as ps

    from vffn_pretrain.parallel.init import release_process_groups

    if not ps.model_parallel_is_initialized():
        release_process_groups()


class RankPool:
    """`RankPool(4)` starts 4 rank processes; `run(fn, ...)` returns [result_rank0, ..., result_rank3]."""

    def __init__(self, world_size: int, start_timeout_s: float = 180.0, env: dict[str, str] | None = None):
        self.world_size = world_size
        self._start_timeout_s = start_timeout_s
        self._child_env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        from vffn_pretrain.parallel.init import free_port

        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(self.world_size)]
        port = free_port()
        self._procs = [
            # Not daemonic: megatron-core's checkpoint writer starts processes of its own.
            ctx.Process(target=_worker, args=(r, self.world_size, port, self._jobs[r], self._results,
                                              self._child_env))
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        self.broken = False
        self._collect("ready", self._start_timeout_s)

    def _worn_out(self) -> bool:
        """Whether a rank has gathered more threads than MAX_RANK_THREADS (see there)."""
        import psutil

        try:
            return max(psutil.Process(p.pid).num_threads() for p in self._procs) > MAX_RANK_THREADS
        except psutil.NoSuchProcess:
            return False

    def _collect(self, expect: str, timeout_s: float) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        errors = {}
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < self.world_size:
            remaining = deadline - time.monotonic()
            dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
            if remaining <= 0 or (dead and self._results.empty()):
                self.close(force=True)
                why = f"rank(s) {dead} died" if dead else f"timed out after {timeout_s:.0f} s"
                detail = "".join(f"\n--- rank {r} ---\n{e}" for r, e in sorted(errors.items()))
                raise RankPoolError(f"{why} waiting for '{expect}' ({seen}/{self.world_size} answered){detail}")
            try:
                rank, status, payload = self._results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            seen += 1
            if status == "error":
                errors[rank] = payload
                # The other ranks may now wait forever in a collective: give them a short grace.
                deadline = min(deadline, time.monotonic() + 15.0)
            else:
                out[rank] = payload
        if errors:
            detail = "".join(f"\n--- rank {r} ---\n{e}" for r, e in sorted(errors.items()))
            if expect == "ready":
                self.close(force=True)
            raise RankPoolError(f"{len(errors)} rank(s) failed:{detail}")
        return out

    def run(self, fn, *args, timeout_s: float = 300.0, **kwargs) -> list[Any]:
        """Run the module-level function `fn` on every rank; results in rank order. Raises RankPoolError with
        each failing rank's traceback; a hang past `timeout_s` kills the pool (mark: `broken`)."""
        if self.broken:
            raise RankPoolError("this pool was killed by an earlier failure; start a new one")
        if self._worn_out():
            self.close()
            self._start()
            self.restarts += 1
        job = (fn.__module__, fn.__qualname__, args, kwargs)
        for q in self._jobs:
            q.put(job)
        return self._collect(fn.__qualname__, timeout_s)

    def close(self, force: bool = False) -> None:
        if not force and not self.broken:
            for q in self._jobs:
                q.put(None)
            for p in self._procs:
                p.join(timeout=20)
        for p in self._procs:
            if p.is_alive():
                _kill_tree(p.pid)
                p.join(timeout=5)
        self.broken = True


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = proc.children(recursive=True) + [proc]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
