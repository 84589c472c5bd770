"""Fault-injection hooks for the tests, read once from the environment when the trainer starts.

    VFFN_FAULT_KILL_IN_SAVE=STEP     kill -9 this process while saving STEP, after its files are written and
                                     before the checkpoint is complete
    VFFN_FAULT_ENOSPC_IN_SAVE=STEP   fail the save of STEP with "[Errno 28] No space left on device" after part
                                     of it is written (a full disk)

Tests running the trainer in-process set the attributes of `FAULTS` directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _step(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else None


@dataclass
class Faults:
    kill_in_save: int | None = None
    enospc_in_save: int | None = None

    @classmethod
    def from_env(cls) -> Faults:
        return cls(kill_in_save=_step("VFFN_FAULT_KILL_IN_SAVE"), enospc_in_save=_step("VFFN_FAULT_ENOSPC_IN_SAVE"))


FAULTS = Faults.from_env()
