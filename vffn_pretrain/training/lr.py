"""Learning-rate schedules on megatron-core's OptimizerParamScheduler (its state is checkpointed)."""

from __future__ import annotations

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from vffn_pretrain.training.config import TrainConfig


def build_scheduler(optimizer, train: TrainConfig, max_steps: int | None = None) -> OptimizerParamScheduler:
    """Linear warmup over warmup_ratio of the steps, then cosine to min_lr_ratio x lr (the paper's recipe),
    or WSD (warmup, stable, then a linear decay over the last wsd_decay_ratio), or constant. Steps are
    optimizer steps (the scheduler is stepped once per global batch)."""
    steps = max_steps or train.max_steps
    warmup = int(round(train.warmup_ratio * steps))
    style = {"cosine": "cosine", "wsd": "WSD", "constant": "constant"}[train.lr_schedule]
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=train.lr,
        min_lr=train.lr * train.min_lr_ratio,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(steps, warmup + 1),
        lr_decay_style=style,
        start_wd=train.weight_decay,
        end_wd=train.weight_decay,
        wd_incr_steps=steps,
        wd_incr_style="constant",
        wsd_decay_steps=max(1, int(round(train.wsd_decay_ratio * steps))) if style == "WSD" else None,
        lr_wsd_decay_style="linear" if style == "WSD" else None,
    )
