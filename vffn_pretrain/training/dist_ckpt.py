"""Save and load model + optimizer with megatron-core distributed checkpoints (torch_dist format).

The on-disk layout is keyed by global parameter names and offsets, so a checkpoint written at one TP/PP/VPP/DP
layout loads at any other. The distributed optimizer is saved `fully_reshardable` for the same reason.

Checkpoints also cross backends: transformer-engine modules carry an `_extra_state` entry (their fp8 metadata) that
the local modules do not have. Loading a local-backend checkpoint into a TE model leaves those entries at their
fresh values; loading a TE checkpoint into a local model ignores them.
Atomic directories, retention and the `latest` marker are the trainer's concern, not this module's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.validation import StrictHandling

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def model_sharded_state_dict(ddp_chunks: list) -> dict:
    """{"chunk0": ..., "chunk1": ...}: one entry per virtual stage; the ShardedTensor keys are global."""
    return {f"chunk{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(ddp_chunks)}


def optimizer_has_state(optimizer) -> bool:
    """Collective. Whether the optimizer holds state on any rank: Adam creates it at its first step, so one that
    never stepped (every step so far skipped for a NaN) has none, and a checkpoint of it would lack the entries a
    load expects."""
    from vffn_pretrain.parallel.init import device

    inner = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    has = torch.tensor([1.0 if any(len(o.state) > 0 for o in inner) else 0.0], device=device())
    torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
    return bool(has.item())


def save(directory: str | Path, ddp_chunks: list, optimizer=None, common: dict[str, Any] | None = None) -> None:
    """Collective: every rank calls it. `common` holds small picklable values saved once (by rank 0). An
    optimizer without state (it never stepped) is not saved, which `load` reads from `common["optimizer_saved"]`:
    loading then leaves the optimizer fresh, as it was."""
    if optimizer is not None and not optimizer_has_state(optimizer):
        optimizer = None
        common = {**(common or {}), "optimizer_saved": False}
    if optimizer is not None and ddp_chunks[0].ddp_config.overlap_param_gather:
        # Params are stale until the next forward with overlapped param gather (docs/cpu.md gotcha 8).
        for chunk in ddp_chunks:
            chunk.start_param_sync(force_sync=True)
    Path(directory).mkdir(parents=True, exist_ok=True)
    model_sd = model_sharded_state_dict(ddp_chunks)
    state = {"model": model_sd, "common": dict(common or {})}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, metadata=OPTIM_METADATA)
    dist_checkpointing.save(state, str(directory), validate_access_integrity=False)


def is_extra_state(key: str) -> bool:
    """A module's `_extra_state` entry (transformer-engine's fp8 metadata), by state-dict or checkpoint key."""
    return key.endswith("_extra_state")


def load_sharded(state: dict, directory: str | Path) -> dict:
    """Collective. `dist_checkpointing.load` of `state` (a sharded state dict) from `directory`, where entries the
    checkpoint lacks are an error, except `_extra_state` ones, which keep their current values."""
    loaded, absent, _ = dist_checkpointing.load(state, str(directory), strict=StrictHandling.RETURN_UNEXPECTED)
    lacking = sorted(k for k in absent if not is_extra_state(k))
    if lacking:
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        raise KeyError(f"checkpoint {directory} has no {', '.join(lacking[:5])}{more}")
    return loaded


def load_module_state(module: torch.nn.Module, state: dict, *, strict: bool = True):
    """`module.load_state_dict(state)`, where `_extra_state` entries may be missing (see `load_sharded`);
    returns torch's (missing_keys, unexpected_keys) without those."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not is_extra_state(k)]
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(f"state does not match the model: missing {missing}, unexpected {result.unexpected_keys}")
    return missing, result.unexpected_keys


def load(directory: str | Path, ddp_chunks: list, optimizer=None, *, strict: bool = True) -> dict[str, Any]:
    """Collective. Loads weights (and optimizer state when `optimizer` is given and the checkpoint has it: see
    `save`); returns the `common` dict."""
    common = dist_checkpointing.load_common_state_dict(str(directory))
    common = dict(common.get("common", {})) if isinstance(common, dict) else {}
    if common.get("optimizer_saved") is False:
        optimizer = None
    model_sd = model_sharded_state_dict(ddp_chunks)
    state = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=OPTIM_METADATA)
    loaded = load_sharded(state, directory)
    for i, chunk in enumerate(ddp_chunks):
        load_module_state(chunk.module, loaded["model"][f"chunk{i}"], strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    return common
