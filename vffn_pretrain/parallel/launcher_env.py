"""What the launcher says about the world, read from the environment before any process group exists.

Kept free of torch so that the config check `launch/torchrun.sh` runs before it starts the workers stays a
second or two, not the import of torch and megatron-core.
"""

from __future__ import annotations

import os


def slurm_step_world_size() -> int:
    """Tasks in this srun step (1 outside srun): each task is one rank when no launcher set RANK."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) if "SLURM_STEP_ID" in os.environ else 1


def launcher_world_size() -> int:
    """The world size the launcher will give init_distributed: WORLD_SIZE (torchrun), else the srun step's tasks."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return slurm_step_world_size()
