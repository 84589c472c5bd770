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
    # A mixed model (ffn.layers) converts each layer by its own kind. moe never mixes, and the renames of the
    # other kinds agree (dense renames nothing), so the union of the kinds' renames and new keys serves all.
    kinds = list(dict.fromkeys(cfg.ffn.layer_kinds(cfg.model.num_layers)))
    kind = "+".join(kinds)
    inverse = {new: old for k in kinds for old, new in dense_to_variant_key_map(k).items()}
    model_sd = _stacked_sharded_state_dict(ddp_chunks)
    new_keys = []
    for chunk_sd in model_sd.values():
        for name in list(chunk_sd):
            item = chunk_sd[name]
            if not isinstance(item, ShardedBase):
                continue
            if any(is_new_parameter(item.key, k) for k in kinds):
                new_keys.append(name)
                del chunk_sd[name]  # not in a dense checkpoint: keep the fresh initialisation
                continue
            for new, old in inverse.items():
                if new in item.key:
                    item.key = item.key.replace(new, old)
    loaded = dist_ckpt.load_sharded({"model": model_sd}, ckpt)
    for i, chunk in enumerate(ddp_chunks):
        missing, unexpected = dist_ckpt.load_module_state(chunk.module, loaded["model"][f"chunk{i}"], strict=False)
        missing = [k for k in missing if not any(is_new_parameter(k, kk) for kk in kinds)]
        if missing or unexpected:
            raise RuntimeError(f"train.init_from={path}: keys that do not match a dense checkpoint: "
                               f"missing {missing}, unexpected {unexpected}")
    log.info("initialised %s from dense checkpoint %s (%d new parameters freshly initialised)", kind, ckpt,
             len(new_keys))
    return ckpt


def _stacked_sharded_state_dict(ddp_chunks: list) -> dict:
    """The model's sharded state dict with megatron's stacked layer keys (decoder.layers.<name>, the layer an
    offset along a leading axis), which is how a dense checkpoint stores its layers. A mixed model keys its
    layers one by one (`hetereogenous_dist_checkpoint`) when it saves; for reading a dense one it asks for the
    stacked form (each of its layers still requests only its own slice)."""
    configs = {id(c.module.config): c.module.config for c in ddp_chunks}.values()
    saved = [(cfg, cfg.hetereogenous_dist_checkpoint) for cfg in configs]
    try:
        for cfg, _ in saved:
            cfg.hetereogenous_dist_checkpoint = False
        return dist_ckpt.model_sharded_state_dict(ddp_chunks)
    finally:
        for cfg, value in saved:
            cfg.hetereogenous_dist_checkpoint = value
