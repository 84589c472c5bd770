"""Save and load model + optimizer with megatron-core distributed checkpoints (torch_dist format).

The on-disk layout is keyed by global parameter names and offsets, so a checkpoint written at one TP/PP/VPP/DP
layout loads at any other. The distributed optimizer is saved `fully_reshardable` for the same reason.

Checkpoints also cross backends: transformer-engine modules carry an `_extra_state` entry (their fp8 metadata) that
the local modules do not have. Loading a local-backend checkpoint into a TE model leaves those entries at their
fresh values; loading a TE checkpoint into a local model ignores them. The optimizer state crosses precisions (fp32,
bf16) and Adam implementations (torch's, transformer-engine's fused one) too: optimizer_layouts.py.
Atomic directories, retention and the `latest` marker are the trainer's concern, not this module's.
"""

from __future__ import annotations

import logging
import queue
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.validation import StrictHandling

from vffn_pretrain.training.optimizer_layouts import LoadPlan

log = logging.getLogger(__name__)

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


def save(directory: str | Path, ddp_chunks: list, optimizer=None, common: dict[str, Any] | None = None, *,
         background: bool = False):
    """Collective: every rank calls it. `common` holds small picklable values saved once (by rank 0). An
    optimizer without state (it never stepped) is not saved, which `load` reads from `common["optimizer_saved"]`:
    loading then leaves the optimizer fresh, as it was.

    With `background`, only the plan and the common state are written here; the tensors are left to the returned
    megatron-core `AsyncRequest`, which the caller schedules (`training/async_save.py`). Its finalize functions
    (collective) write the checkpoint's metadata once every rank has written its files, and raise on every rank
    if any rank failed. Without it, returns None once the checkpoint is complete."""
    if optimizer is not None and not optimizer_has_state(optimizer):
        optimizer = None
        common = {**(common or {}), "optimizer_saved": False}
    if optimizer is not None and ddp_chunks[0].ddp_config.overlap_param_gather:
        # Params are stale until the next forward with overlapped param gather (docs/cpu.md gotcha 8).
        for chunk in ddp_chunks:
            chunk.start_param_sync(force_sync=True)
    Path(directory).mkdir(parents=True, exist_ok=True)
    _set_results_queue(background)
    model_sd = model_sharded_state_dict(ddp_chunks)
    state = {"model": model_sd, "common": dict(common or {})}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, metadata=OPTIM_METADATA)
    return dist_checkpointing.save(state, str(directory), validate_access_integrity=False,
                                   async_sharded_save=background)


def _set_results_queue(background: bool) -> None:
    """Where megatron-core's file writers report what they wrote (the writer of a save takes the queue set when
    the save begins). A synchronous save writes from this process, so a queue of this process does. A background
    one writes from a child process, which reports through a multiprocessing manager's queue (a spawned server
    process; megatron-core starts one at the first save of either kind, which costs seconds: the server imports
    torch to read the first report). Ours is started at the first background save, with the stop signals ignored
    (`signals.ignore_stop_signals`: a manager killed by the SIGTERM that SLURM sends to a whole job step would
    fail the save the trainer makes on that signal). Local; the manager lives as long as the process."""
    global _manager_queue
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not background:
        filesystem_async._results_queue = queue.Queue()
        return
    if _manager_queue is None:
        _manager_queue = results_manager().Queue()  # the queue's proxy keeps the manager alive
    filesystem_async._results_queue = _manager_queue


_manager_queue = None


def results_manager() -> SyncManager:
    """A started multiprocessing manager (spawned, as megatron-core's) whose server ignores the stop signals."""
    from torch import multiprocessing as mp

    from vffn_pretrain.training.signals import ignore_stop_signals

    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=ignore_stop_signals)
    return manager


def is_extra_state(key: str) -> bool:
    """A module's `_extra_state` entry (transformer-engine's fp8 metadata), by state-dict or checkpoint key."""
    return key.endswith("_extra_state")


def load_sharded(state: dict, directory: str | Path) -> dict:
    """Collective. `dist_checkpointing.load` of `state` (a sharded state dict) from `directory`, where entries the
    checkpoint lacks are an error, except `_extra_state` ones, which keep their current values. Entries the
    checkpoint has and `state` does not ask for are left out, with a warning when they belong to what was asked
    (a model weight when model weights were asked for)."""
    # megatron returns (state, missing keys: in the checkpoint, not asked for; unexpected keys: asked for, not in
    # the checkpoint); with RETURN_ALL it leaves both to the caller.
    loaded, unused, absent = dist_checkpointing.load(state, str(directory), strict=StrictHandling.RETURN_ALL)
    lacking = sorted(k for k in absent if not is_extra_state(k))
    if lacking:
        raise KeyError(f"checkpoint {directory} has no {_some(lacking)}")
    asked = {key.split(".", 1)[0] for key in _sharded_keys(state)}
    left = sorted(k for k in unused if not is_extra_state(k) and k.split(".", 1)[0] in asked)
    if left and _is_first_rank():
        log.warning("checkpoint %s has %s, which this model does not use: not loaded", directory, _some(left))
    return loaded


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _sharded_keys(state: dict) -> list[str]:
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedBase

    return [v.key for v in nested_values(state) if isinstance(v, ShardedBase)]


def _is_first_rank() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


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
    `save`); returns the `common` dict.

    The optimizer state may come from a run of another precision or Adam implementation
    (training/optimizer_layouts.py); a layout it cannot be mapped from raises LayoutRefused, naming the key."""
    model_sd = model_sharded_state_dict(ddp_chunks)
    common = dist_checkpointing.load_common_state_dict(str(directory))
    common = common if isinstance(common, dict) else {}
    if common.get("common", {}).get("optimizer_saved") is False:
        optimizer = None  # it never stepped: it stays fresh
    plan = None
    state = {"model": model_sd}
    if optimizer is not None:
        plan = LoadPlan(optimizer, model_sd, common.get("optimizer"), OPTIM_METADATA)
        state = plan.request
    loaded = load_sharded(state, directory)
    for i, chunk in enumerate(ddp_chunks):
        load_module_state(chunk.module, loaded["model"][f"chunk{i}"], strict=strict)
    if plan is not None:
        plan.restore(loaded)
    return dict(common.get("common", {}))
