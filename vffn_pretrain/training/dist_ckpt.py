"""Save and load model + optimizer with megatron-core distributed checkpoints (torch_dist format).

The on-disk layout is keyed by global parameter names and offsets, so a checkpoint written at one TP/PP/VPP/DP
layout loads at any other. The distributed optimizer is saved `fully_reshardable` for the same reason.
Atomic directories, retention and the `latest` marker are the trainer's concern, not this module's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def model_sharded_state_dict(ddp_chunks: list) -> dict:
    """{"chunk0": ..., "chunk1": ...}: one entry per virtual stage; the ShardedTensor keys are global."""
    return {f"chunk{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(ddp_chunks)}


def save(directory: str | Path, ddp_chunks: list, optimizer=None, common: dict[str, Any] | None = None) -> None:
    """Collective: every rank calls it. `common` holds small picklable values saved once (by rank 0)."""
    if optimizer is not None and ddp_chunks[0].ddp_config.overlap_param_gather:
        # Params are stale until the next forward with overlapped param gather (megatron-on-cpu.md gotcha 8).
        for chunk in ddp_chunks:
            chunk.start_param_sync(force_sync=True)
    Path(directory).mkdir(parents=True, exist_ok=True)
    model_sd = model_sharded_state_dict(ddp_chunks)
    state = {"model": model_sd, "common": dict(common or {})}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, metadata=OPTIM_METADATA)
    dist_checkpointing.save(state, str(directory), validate_access_integrity=False)


def load(directory: str | Path, ddp_chunks: list, optimizer=None, *, strict: bool = True) -> dict[str, Any]:
    """Collective. Loads weights (and optimizer state when `optimizer` is given); returns the `common` dict."""
    model_sd = model_sharded_state_dict(ddp_chunks)
    state = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=OPTIM_METADATA)
    loaded = dist_checkpointing.load(state, str(directory))
    for i, chunk in enumerate(ddp_chunks):
        chunk.module.load_state_dict(loaded["model"][f"chunk{i}"], strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    common = dist_checkpointing.load_common_state_dict(str(directory))
    return dict(common.get("common", {})) if isinstance(common, dict) else {}


@torch.no_grad()
def swap_params_with(ddp_chunks: list, tensors: dict[torch.nn.Parameter, torch.Tensor]) -> dict:
    """Point each parameter's data at `tensors[param]`; returns the previous data to swap back.

    Lets the checkpoint machinery save or load other per-parameter tensors (e.g. gradients) with the same
    global layout as the weights.
    """
    previous = {}
    for p, t in tensors.items():
        previous[p] = p.data
        p.data = t
    return previous
