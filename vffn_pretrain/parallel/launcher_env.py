"""What the launcher says about the world, read from the environment before any process group exists.

Kept free of torch so that the config check `launch/torchrun.sh` runs before it starts the workers stays a
second or two, not the import of torch and megatron-core.
"""

from __future__ import annotations

import os


def slurm_step_world_size() -> int:
    """Tasks in this srun step (1 outside srun): each task is one rank when no launcher set RANK."""
    return _positive_int("SLURM_STEP_NUM_TASKS") if "SLURM_STEP_ID" in os.environ else 1


def launcher_world_size() -> int:
    """The world size the launcher will give init_distributed: WORLD_SIZE (torchrun), else the srun step's tasks.
    Raises ValueError naming the variable when it is not a positive integer."""
    if "WORLD_SIZE" in os.environ:
        return _positive_int("WORLD_SIZE")
    return slurm_step_world_size()


def _positive_int(name: str) -> int:
    raw = os.environ.get(name, "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive integer (set by the launcher)")
    return value
