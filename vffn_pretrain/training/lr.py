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


def schedule_change_message(scheduler: OptimizerParamScheduler, optimizer, ffn_cfg, step: int, old_steps: int,
                            new_steps: int) -> str:
    """One line for a resume with another train.max_steps: megatron's scheduler keeps the checkpoint's decay
    length while the τ decay follows the new train.max_steps. Says so, with the numbers."""
    from vffn_pretrain.model.ffn.state import current_tau

    group = optimizer.param_groups[0]
    lr_now = scheduler.get_lr(group)
    restored = scheduler.num_steps
    scheduler.num_steps = new_steps
    lr_end = scheduler.get_lr(group)
    scheduler.num_steps = restored
    tau_old, tau_new = current_tau(ffn_cfg, step, old_steps), current_tau(ffn_cfg, step, new_steps)
    return (f"train.max_steps changed from {old_steps} to {new_steps} at step {step}: the LR schedule keeps the "
            f"checkpoint's decay over {scheduler.lr_decay_steps} steps (LR now {lr_now:.3g}, {lr_end:.3g} at step "
            f"{new_steps}); the tau decay is re-stretched to {new_steps} steps (tau now {_fmt(tau_new)}, was "
            f"{_fmt(tau_old)}). To pause a run use train.exit_interval; to make a run extendable use "
            "train.lr_schedule=wsd.")


def _fmt(tau: float | None) -> str:
    return "n/a" if tau is None else f"{tau:.3g}"
