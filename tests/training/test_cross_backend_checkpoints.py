"""Checkpoints cross backends: transformer-engine modules add `_extra_state` entries (fp8 metadata) that local
modules lack. megatron's local linears already write a placeholder for theirs; the norms and the core attention
(TENorm, TEDotProductAttention) are where a TE model has entries a local checkpoint lacks. A TE-shaped model is
built here without TE: the local norm and core attention plus a get/set_extra_state, so the model's sharded state
dict carries `_extra_state` ShardedObjects where TE's does."""

from __future__ import annotations

import torch

from tests.training import trainer_runs as cases
from vffn_pretrain.model.attention import SDPACoreAttention
from vffn_pretrain.model.norm import RMSNorm

EXTRA = torch.tensor([7, 1], dtype=torch.uint8)


class _WithExtraState:
    def get_extra_state(self):
        return EXTRA.clone()

    def set_extra_state(self, state):
        self.loaded_extra_state = state


class ExtraStateNorm(_WithExtraState, RMSNorm):
    pass


class ExtraStateAttention(_WithExtraState, SDPACoreAttention):
    pass


def train_as(overrides: list[str], te_shaped: bool) -> dict:
    """Run the trainer (resuming or init_from as the overrides say) with a TE-shaped or a plain local model."""
    from dataclasses import replace

    from megatron.core import parallel_state as ps

    from vffn_pretrain.model import gpt
    from vffn_pretrain.training.dist_ckpt import model_sharded_state_dict
    from vffn_pretrain.training.trainer import Trainer

    original = gpt.select_backend
    if te_shaped:
        gpt.select_backend = lambda prefer="auto": replace(original("local"), norm=ExtraStateNorm,
                                                           core_attention=ExtraStateAttention)
    try:
        trainer = Trainer(cases.run_config(overrides))
        trainer.setup()
        keys = [k for chunk in model_sharded_state_dict(trainer.ddp).values() for k in chunk]
        restored = [m for m in trainer.ddp[0].module.modules() if getattr(m, "loaded_extra_state", None) is not None]
        code = trainer.fit()
    finally:
        gpt.select_backend = original
        ps.destroy_model_parallel()
    return {"exit_code": code, "start_step": trainer.start_step, "extra_keys": sum(k.endswith("_extra_state")
                                                                                   for k in keys),
            "restored_extra": len(restored)}


def test_resume_across_backends(rank_pools, base_overrides, tmp_path):
    pool = rank_pools(1)
    local_run = [*base_overrides, f"run_dir={tmp_path / 'a'}"]
    local = pool.run(train_as, [*local_run, "train.max_steps=1"], False)[0]
    assert local["exit_code"] == 0
    te = pool.run(train_as, [*local_run, "train.max_steps=2"], True)[0]  # local checkpoint -> TE-shaped model
    assert te["extra_keys"] > local["extra_keys"]  # the model really has entries the checkpoint lacks
    assert te["exit_code"] == 0 and te["start_step"] == 1 and te["restored_extra"] == 0
    back = pool.run(train_as, [*local_run, "train.max_steps=3"], False)[0]  # TE-shaped checkpoint -> local model
    assert back["exit_code"] == 0 and back["start_step"] == 2 and back["extra_keys"] == local["extra_keys"]
    assert pool.run(train_as, [*local_run, "train.max_steps=4"], True)[0]["exit_code"] == 0
    again = pool.run(train_as, [*local_run, "train.max_steps=5"], True)[0]  # TE-shaped -> TE-shaped keeps them
    assert again["start_step"] == 4 and again["exit_code"] == 0 and again["restored_extra"] > 0


def test_init_from_a_local_dense_checkpoint_into_a_te_shaped_model(rank_pools, base_overrides, tmp_path):
    pool = rank_pools(1)
    dense = pool.run(train_as, [*base_overrides, f"run_dir={tmp_path / 'dense'}", "ffn=dense",
                                "train.max_steps=1"], False)[0]
    assert dense["exit_code"] == 0
    run = pool.run(train_as, [*base_overrides, f"run_dir={tmp_path / 'vffn'}", "train.max_steps=1",
                              f"train.init_from={tmp_path / 'dense' / 'checkpoints'}"], True)[0]
    assert run["exit_code"] == 0 and run["extra_keys"] > dense["extra_keys"] and run["start_step"] == 0
