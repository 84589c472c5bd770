"""One trainer per run directory: `run_dir/vffn-pretrain.lock` holds the host and PID of the process that owns it.

Two trainers on one `run_dir` would write the same checkpoint directories and interleave `metrics.jsonl`. The
lock is taken by rank 0 before anything is written and removed when the run ends. The mechanism is the tools'
(`outputs.lock`): a lock left by a process that died (kill -9, the OOM killer) is taken over with a warning when
its PID is gone on this host; a lock from another host cannot be checked from here, so it is refused with
instructions.
"""

from __future__ import annotations

from pathlib import Path

from vffn_pretrain.outputs.lock import OutputInUse, OwnerLock

LOCK_NAME = "vffn-pretrain.lock"

RunDirLocked = OutputInUse  # another live process holds the run directory


class RunLock(OwnerLock):
    def __init__(self, run_dir: str | Path):
        super().__init__(Path(run_dir) / LOCK_NAME, str(Path(run_dir)), sharing="two trainers must not share a run_dir")
