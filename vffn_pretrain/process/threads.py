"""CPU threads for a training process, and a word when other processes compete for the cores.

A rank computes on the CPU cores it may run on (its affinity mask, which SLURM and taskset set), shared with the
other ranks of its node: each gets an equal part, at least one thread. `OMP_NUM_THREADS`, when the user or the
launcher set it, wins. Competition is measured, not guessed: the CPU the other processes of the machine used
during start-up, compared with the cores this node's ranks need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

COMPETING_CORES = 0.5  # others using more than this many of the cores the ranks need is worth a line


@dataclass(frozen=True)
class ThreadPlan:
    """threads: intra-op threads of this rank; cores: CPUs this process may run on; from_env: OMP_NUM_THREADS
    decided; local_ranks: training processes of this node sharing the cores."""

    threads: int
    cores: int
    local_ranks: int
    from_env: bool
    note: str | None = None  # why OMP_NUM_THREADS was not taken as given (one line for the log)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1


def plan_threads(env: dict[str, str] | None = None, cores: int | None = None) -> ThreadPlan:
    """The thread count for one rank: the usable cores split evenly between the node's ranks (LOCAL_WORLD_SIZE,
    set by torchrun; 1 otherwise), or OMP_NUM_THREADS when it is a positive integer no larger than that share
    (a larger one is capped at it: asking the OpenMP runtime for 100000 threads fails, and more threads than
    cores only slow the ranks down). `note` says when OMP_NUM_THREADS was capped or ignored."""
    env = os.environ if env is None else env
    cores = usable_cores() if cores is None else cores
    try:
        local_ranks = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    given = env.get("OMP_NUM_THREADS", "").strip()
    share = max(1, cores // local_ranks)
    # ASCII digits only ('²'.isdigit() is true and int('²') fails), and few enough for int() to read
    asked = int(given) if given.isascii() and given.isdigit() and len(given) <= 9 else 0
    if asked > 0:
        if asked <= share:
            return ThreadPlan(asked, cores, local_ranks, from_env=True)
        return ThreadPlan(share, cores, local_ranks, from_env=True,
                          note=f"OMP_NUM_THREADS={given} is more than this rank's share of the {cores} usable CPU "
                               f"cores ({local_ranks} rank(s) here); using {share} threads")
    note = f"OMP_NUM_THREADS={given!r} is not a positive integer; ignored" if given else None
    return ThreadPlan(share, cores, local_ranks, from_env=False, note=note)


class OtherLoad:
    """Cores' worth of CPU the rest of the machine used between `OtherLoad()` and `busy_cores()`: the machine's
    busy time less this process's own, less what the node's other training ranks used (taken to be as busy as
    this one). No sleeping sample: the interval is whatever the caller did in between (start-up)."""

    def __init__(self, local_ranks: int = 1):
        import psutil

        self._psutil, self.local_ranks = psutil, local_ranks
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        import time

        machine = self._psutil.cpu_times()
        own = self._psutil.Process().cpu_times()
        return time.monotonic(), machine.user + machine.system + getattr(machine, "nice", 0.0), own.user + own.system

    def busy_cores(self) -> float:
        t0, machine0, own0 = self._start
        t1, machine1, own1 = self._read()
        if t1 - t0 <= 0.05:
            return 0.0
        own = (own1 - own0) / (t1 - t0)
        return max(0.0, (machine1 - machine0) / (t1 - t0) - own * self.local_ranks)


def competition_note(plan: ThreadPlan, busy: float) -> str | None:
    """One line when the other processes leave this node's ranks fewer cores than their threads, else None."""
    needed = min(plan.cores, plan.threads * plan.local_ranks)
    free = plan.cores - busy
    if busy <= COMPETING_CORES or free >= needed:
        return None
    return (f"other processes are using {busy:.1f} of this machine's {plan.cores} usable CPU cores; the "
            f"{plan.local_ranks} training process(es) here want {needed} with {plan.threads} thread(s) each, so "
            "steps will be slower than on a quiet machine")


def configure_cpu_threads() -> ThreadPlan:
    """Apply the plan to torch (intra-op threads); returns it for the start-up line."""
    import torch

    plan = plan_threads()
    torch.set_num_threads(plan.threads)
    return plan
