"""Continued pretraining (the paper's protocol): load a dense checkpoint into a VersatileFFN, k-loop or MoE
model. Shared weights are copied (renamed per `model.ffn.convert`), the new parameters (router, loop head, MoE
experts) keep their fresh initialisation, and optimizer and schedule start anew.
"""

from __future__ import annotations

import logging
from pathlib import Path

from megatron.core.dist_checkpointing.mapping import ShardedBase

from vffn_pretrain.model.ffn.convert import dense_to_variant_key_map, is_new_parameter
from vffn_pretrain.training import dist_ckpt

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory: `path` itself, or the newest complete one in `path` (a checkpoint.dir)."""
    from vffn_pretrain.training.checkpointing import CheckpointManager

    path = Path(path)
    if (path / "metadata.json").is_file():
        return path
    newest = CheckpointManager(path).latest()
    if newest is None:
        raise FileNotFoundError(f"train.init_from={path}: neither a checkpoint nor a directory of checkpoints")
    return newest


def load_dense_into(path: str | Path, ddp_chunks: list, cfg) -> Path:
    """Collective. Fills the model's shared weights from the dense checkpoint at `path`; returns its dir."""
    ckpt = resolve_checkpoint(path)
    kind = cfg.ffn.kind
    inverse = {new: old for old, new in dense_to_variant_key_map(kind).items()}
    model_sd = dist_ckpt.model_sharded_state_dict(ddp_chunks)
    new_keys = []
    for chunk_sd in model_sd.values():
        for name in list(chunk_sd):
            item = chunk_sd[name]
            if not isinstance(item, ShardedBase):
                continue
            if is_new_parameter(item.key, kind):
                new_keys.append(name)
                del chunk_sd[name]  # not in a dense checkpoint: keep the fresh initialisation
                continue
            for new, old in inverse.items():
                if new in item.key:
                    item.key = item.key.replace(new, old)
    loaded = dist_ckpt.load_sharded({"model": model_sd}, ckpt)
    for i, chunk in enumerate(ddp_chunks):
        missing, unexpected = dist_ckpt.load_module_state(chunk.module, loaded["model"][f"chunk{i}"], strict=False)
        missing = [k for k in missing if not is_new_parameter(k, kind)]
        if missing or unexpected:
            raise RuntimeError(f"train.init_from={path}: keys that do not match a dense checkpoint: "
                               f"missing {missing}, unexpected {unexpected}")
    log.info("initialised %s from dense checkpoint %s (%d new parameters freshly initialised)", kind, ckpt,
             len(new_keys))
    return ckpt
