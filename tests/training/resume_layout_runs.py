"""Functions run on a RankPool rank by test_resume_across_layouts.py (module level, so they pickle): train the tiny
VersatileFFN GPT in one precision / with one Adam, save, and load the checkpoint into a model and optimizer of
another; report what the loaded optimizer holds against what was saved."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import torch
from megatron.core import parallel_state as ps

from tests.parallel.layout_runs import SEED, TINY, run_steps
from tests.training import fused_adam_standin
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all, setup_model_parallel
from vffn_pretrain.training import dist_ckpt
from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp


def _build(dtype: torch.dtype, fused_adam: bool, distributed_optimizer: bool = False):
    parallel = ParallelConfig(distributed_optimizer=distributed_optimizer)
    setup_model_parallel(parallel)
    seed_all(SEED)
    chunks = build_model(ModelConfig(**TINY), FFNConfig(kind="versatile"), parallel, params_dtype=dtype)
    ddp = wrap_ddp(chunks, parallel)
    if fused_adam:
        with fused_adam_standin.installed():
            optimizer = build_optimizer(ddp, OptimConfig(lr=3e-3, min_lr=3e-3), parallel, bf16=dtype == torch.bfloat16)
    else:
        optimizer = build_optimizer(ddp, OptimConfig(lr=3e-3, min_lr=3e-3), parallel, bf16=dtype == torch.bfloat16)
    return ddp, optimizer


def _snapshot(optimizer) -> dict:
    """The optimizer's fp32 weights, moments and step counts, in parameter order."""
    (inner,) = optimizer.chained_optimizers
    torch_opt = inner.optimizer
    params = [p for group in torch_opt.param_groups for p in group["params"]]  # fp32: the weights themselves
    state = [torch_opt.state[p] for p in params]
    steps = sorted({float(s["step"]) for s in state if "step" in s} |
                   {float(g["step"]) for g in torch_opt.param_groups if "step" in g})
    pairs = zip(chain(*inner.fp32_from_float16_groups), chain(*inner.float16_groups)) \
        if hasattr(inner, "float16_groups") else []
    return {"weights": [p.detach().float().clone() for p in params],
            "model_is_main_rounded": all(torch.equal(main.to(model.dtype), model) for main, model in pairs),
            "exp_avg": [s["exp_avg"].clone() for s in state], "exp_avg_sq": [s["exp_avg_sq"].clone() for s in state],
            "steps": steps, "per_param_steps": sum("step" in s for s in state),
            "group_steps": sum("step" in g for g in torch_opt.param_groups)}


def resume_across(workdir: str, saved: dict, loaded: dict) -> dict:
    """Train 2 steps with `saved` ({"dtype", "fused_adam"}), save; load into a model and optimizer built with
    `loaded`; returns what was saved and what was loaded (snapshots) and the loss of one more step."""
    ckpt = Path(workdir) / "ckpt"
    ddp, optimizer = _build(saved["dtype"], saved["fused_adam"], saved.get("distributed", False))
    run_steps(ddp, optimizer, range(2))
    dist_ckpt.save(ckpt, ddp, optimizer, common={"step": 2})
    before = _snapshot(optimizer) if not saved.get("distributed") else None
    ps.destroy_model_parallel()
    del ddp, optimizer

    ddp, optimizer = _build(loaded["dtype"], loaded["fused_adam"], loaded.get("distributed", False))
    dist_ckpt.load(ckpt, ddp, optimizer)
    after = _snapshot(optimizer) if not loaded.get("distributed") else None
    loss = run_steps(ddp, optimizer, range(2, 3))[0]
    ps.destroy_model_parallel()
    return {"before": before, "after": after, "loss": loss}
