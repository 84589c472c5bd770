"""Fault-injection hooks for the tests, read once from the environment when this module is first imported (the
trainer's start-up), never per step:

    VFFN_FAULT_KILL_IN_SAVE=STEP     kill -9 this process while saving STEP, after its files are written and
                                     before the checkpoint is complete
    VFFN_FAULT_ENOSPC_IN_SAVE=STEP   fail the save of STEP with "[Errno 28] No space left on device" after part
                                     of it is written (a full disk)
    VFFN_FAULT_NAN_STEPS=5,6         make the loss NaN on those steps (numbered as logged, from 1)
    VFFN_FAULT_KILL_RANK=1:4         kill -9 rank 1 in the forward pass of step 4 (a worker lost to the OOM
                                     killer or a failed node: the other ranks find out in a collective)
    VFFN_FAULT_SLOW_WRITE=4:30,6:1   with checkpoint.async_save, the background writer of checkpoint 4 waits 30 s
                                     (of 6: 1 s) before it writes (a slow disk: the write is in flight meanwhile)

With checkpoint.async_save, VFFN_FAULT_KILL_IN_SAVE kills the trainer once the background write has started, and
VFFN_FAULT_ENOSPC_IN_SAVE sends one of the checkpoint's files to /dev/full, so that the writer fails with ENOSPC.

Tests running the trainer in-process set the attributes of `FAULTS` directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _step(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else None


def _step_seconds(name: str) -> dict[int, float]:
    out = {}
    for item in os.environ.get(name, "").split(","):
        step, _, seconds = item.partition(":")
        try:
            out[int(step)] = float(seconds)
        except ValueError:
            continue
    return out


def _rank_step(name: str) -> tuple[int, int] | None:
    rank, _, step = os.environ.get(name, "").partition(":")
    return (int(rank), int(step)) if rank.strip().isdigit() and step.strip().isdigit() else None


def _steps(name: str) -> frozenset[int]:
    return frozenset(int(s) for s in os.environ.get(name, "").split(",") if s.strip())


@dataclass
class Faults:
    kill_in_save: int | None = None
    enospc_in_save: int | None = None
    nan_steps: frozenset[int] = field(default_factory=frozenset)
    slow_write: dict[int, float] = field(default_factory=dict)
    kill_rank: tuple[int, int] | None = None  # (rank, step)

    @classmethod
    def from_env(cls) -> Faults:
        return cls(kill_in_save=_step("VFFN_FAULT_KILL_IN_SAVE"), enospc_in_save=_step("VFFN_FAULT_ENOSPC_IN_SAVE"),
                   nan_steps=_steps("VFFN_FAULT_NAN_STEPS"), slow_write=_step_seconds("VFFN_FAULT_SLOW_WRITE"),
                   kill_rank=_rank_step("VFFN_FAULT_KILL_RANK"))


FAULTS = Faults.from_env()
