"""Checkpoints that never lose a run.

Layout under `checkpoint.dir`:
    step_0000100/          one megatron-core distributed checkpoint (model, optimizer) + common state
        rng/rank_00003.pt  per-rank RNG states (restored only when the layout is unchanged)
    latest                 the name of the newest complete checkpoint, replaced atomically, written last

A save goes to `.tmp-step_0000100/` and is renamed into place once every rank has written its part, so a crash
mid-save leaves the previous checkpoint intact and `latest` pointing at it. On resume, a checkpoint that fails
to load is reported and the next older one is tried.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from vffn_pretrain.parallel.init import device as rank_device
from vffn_pretrain.training import dist_ckpt

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class LoadedCheckpoint:
    path: Path
    common: dict[str, Any]


def rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


class CheckpointManager:
    """Saves, lists, prunes and loads checkpoints in `root`. Every method is collective (all ranks call it)."""

    def __init__(self, root: str | Path, keep: int = 3):
        self.root = Path(root)
        self.keep = keep

    # ---------------------------------------------------------------------------------------------- listing
    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, newest step first.

        A `step_*` directory exists only once every rank finished writing it (it is renamed into place), so the
        scan is the truth; `latest` can lag by one when a process dies between the rename and the marker update.
        """
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()),
                      key=lambda p: int(_STEP_DIR.match(p.name).group(1)), reverse=True)

    def latest(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[0] if found else None

    # ---------------------------------------------------------------------------------------------- saving
    def save(self, step: int, ddp_chunks: list, optimizer, common: dict[str, Any], layout: dict) -> Path:
        rank = dist.get_rank()
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crashed save
        dist.barrier()
        dist_ckpt.save(tmp, ddp_chunks, optimizer, common={**common, "layout": layout})
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save({"layout": layout, "state": rng_state()}, tmp / "rng" / f"rank_{rank:05d}.pt")
        if os.environ.get("VFFN_FAULT_KILL_IN_SAVE") == str(step):
            os.kill(os.getpid(), 9)  # test hook: die after writing, before the checkpoint is complete
        dist.barrier()
        if rank == 0:
            if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_atomically(self.root / "latest", final.name)
            self._prune()
        dist.barrier()
        return final

    def _prune(self) -> None:
        for old in self.complete_checkpoints()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- loading
    def load_latest(self, ddp_chunks: list, optimizer, layout: dict) -> LoadedCheckpoint | None:
        """Load the newest checkpoint that loads; None if there is none. Reports each one that fails."""
        candidates = self.complete_checkpoints()
        for path in candidates:
            loaded = self.try_load(path, ddp_chunks, optimizer, layout)
            if loaded is not None:
                return loaded
        if candidates:
            raise RuntimeError(f"no checkpoint in {self.root} could be loaded (tried {[p.name for p in candidates]})")
        return None

    def try_load(self, path: Path, ddp_chunks: list, optimizer, layout: dict) -> LoadedCheckpoint | None:
        error = None
        try:
            common = dist_ckpt.load(path, ddp_chunks, optimizer)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - damaged: report it, fall back
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            common = {}
        failed = torch.tensor([1.0 if error else 0.0], device=rank_device())  # NCCL takes no CPU tensors
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            if dist.get_rank() == 0 or error:
                log.error("checkpoint %s failed to load (%s); trying the previous one", path,
                          error or "failed on another rank")
            return None
        rng_file = path / "rng" / f"rank_{dist.get_rank():05d}.pt"
        same_layout = common.get("layout") == layout
        if same_layout and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False)["state"])
        elif dist.get_rank() == 0:
            log.info("checkpoint layout %s differs from this run's %s: RNG states not restored",
                     common.get("layout"), layout)
        return LoadedCheckpoint(path, common)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
