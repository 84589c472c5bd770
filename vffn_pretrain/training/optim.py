"""megatron-core DDP wrapping and optimizer construction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.utils import get_model_config

from vffn_pretrain.parallel.config import ParallelConfig


@dataclass
class OptimConfig:
    """AdamW as in the paper (App. B): betas (0.9, 0.95), eps 1e-8, weight decay 0.1 (not on norms/biases)."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0

    @classmethod
    def from_train(cls, t) -> OptimConfig:
        """The optimizer settings of a `train.*` config (TrainConfig)."""
        return cls(lr=t.lr, min_lr=t.lr * t.min_lr_ratio, weight_decay=t.weight_decay, beta1=t.beta1,
                   beta2=t.beta2, eps=t.eps, clip_grad=t.clip_grad)


def wrap_ddp(chunks: list, parallel: ParallelConfig, *, bucket_size: int | None = None
             ) -> list[DistributedDataParallel]:
    """Wrap each model chunk in megatron-core DDP (contiguous grad buffers, optional distributed optimizer).
    `bucket_size`: parameters per communication bucket (None: megatron's default, about 40M with overlap)."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=parallel.distributed_optimizer,
        check_for_nan_in_grad=False,  # the trainer checks the loss and grad norm itself, and skips the step
        bucket_size=bucket_size,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        wrapped.append(
            DistributedDataParallel(
                config=get_model_config(chunk),
                ddp_config=ddp_config,
                module=chunk,
                # Bucketing only the first chunk lets its grads overlap with the other chunks' backward.
                disable_bucketing=i > 0,
            )
        )
    return wrapped


def build_optimizer(ddp_chunks: list[DistributedDataParallel], cfg: OptimConfig, parallel: ParallelConfig,
                    *, bf16: bool = False):
    """megatron-core optimizer over all chunks; also wires the schedule hooks into the model config."""
    opt_config = OptimizerConfig(
        optimizer="adam",  # megatron's torch fallback is AdamW (decoupled weight decay)
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.beta1,
        adam_beta2=cfg.beta2,
        adam_eps=cfg.eps,
        clip_grad=cfg.clip_grad,
        bf16=bf16,
        params_dtype=get_model_config(ddp_chunks[0]).params_dtype,
        use_distributed_optimizer=parallel.distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, ddp_chunks)
    config = get_model_config(ddp_chunks[0])
    config.finalize_model_grads_func = finalize_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [c.no_sync for c in ddp_chunks]
    if len(ddp_chunks) == 1:
        config.no_sync_func = config.no_sync_func[0]
    if parallel.overlap_grad_reduce:
        config.grad_sync_func = [c.start_grad_sync for c in ddp_chunks]
        if len(ddp_chunks) == 1:
            config.grad_sync_func = config.grad_sync_func[0]
    if parallel.overlap_param_gather:
        config.param_sync_func = [c.start_param_sync for c in ddp_chunks]
        if len(ddp_chunks) == 1:
            config.param_sync_func = config.param_sync_func[0]
    return optimizer


def finalize_grads(model: list, *args, **kwargs) -> None:
    """megatron's finalize_model_grads (DP reduction, SP and embedding all-reduces, per-token scaling), then the
    gradients of TP-replicated parameters made bitwise identical on every TP rank (`sync_tp_replicated_grads`)."""
    finalize_model_grads(model, *args, **kwargs)
    sync_tp_replicated_grads(model)


def sync_tp_replicated_grads(model: list) -> None:
    """Broadcast, from the first rank of each TP group, the main gradients of the parameters marked
    `tp_replicated` (VersatileFFN's router and loop head) without `sequence_parallel` (those megatron already
    all-reduces over TP, which leaves every rank the same sum).

    Why: without SP every TP rank computes these gradients from the same tokens, but each TP rank reduces them
    over DP on its own communicator, and nothing makes those reductions bitwise equal. Weights that drift apart
    by an ulp can flip a near-tie loop decision on one TP rank only, and the token-sparse loop plan, whose row
    counts size the TP collectives, would differ between ranks (a hang, or mixed-up rows). Equal gradients keep
    the weights, and the optimizer's state, equal. Collective over each TP group; a no-op at TP=1."""
    group = ps.get_tensor_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return
    grads = [p.main_grad for chunk in model for p in chunk.parameters()
             if getattr(p, "tp_replicated", False) and not getattr(p, "sequence_parallel", False)]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.broadcast(flat, src=ps.get_tensor_model_parallel_src_rank(), group=group)
    for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)
