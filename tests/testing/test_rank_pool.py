"""The rank pool replaces ranks that have gathered too many threads (gloo threads that outlive their groups) before
the next job, and the job still runs on a complete world."""

from __future__ import annotations

import os
import threading

import torch
import torch.distributed as dist

from vffn_pretrain.testing.rank_pool import MAX_RANK_THREADS, RankPool

_parked: list[threading.Event] = []


def park_threads(n: int) -> int:
    """Start n threads that wait forever (what leaked gloo threads look like to the pool); this rank's pid."""
    for _ in range(n):
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        _parked.append(stop)
    return os.getpid()


def world_sum() -> tuple[int, float]:
    x = torch.ones(1)
    dist.all_reduce(x)
    return os.getpid(), float(x)


def test_a_rank_with_too_many_threads_is_replaced_before_the_next_job():
    pool = RankPool(2)
    try:
        first = pool.run(park_threads, 10)
        assert [pid for pid, _ in pool.run(world_sum)] == first and pool.restarts == 0  # few threads: kept
        pool.run(park_threads, MAX_RANK_THREADS)
        again = pool.run(world_sum)
        assert pool.restarts == 1
        assert [total for _, total in again] == [2.0, 2.0]  # a whole new world of two
        assert not set(pid for pid, _ in again) & set(first)
    finally:
        pool.close()
