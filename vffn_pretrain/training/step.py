"""One optimizer step through megatron-core's pipeline schedules (no pipelining, 1F1B, interleaved).

The loss is a per-token mean over the whole global batch: each micro-batch returns (sum of token losses,
token count), megatron-core sums both over micro-batches and DP ranks and scales the gradients by 1 / tokens
(`calculate_per_token_loss`). So the result does not depend on how the batch is cut into micro-batches or
DP ranks, which is what the parallel-equivalence tests rely on.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from vffn_pretrain.model import noise
from vffn_pretrain.parallel.init import device as rank_device
from vffn_pretrain.training.faults import FAULTS


@dataclass
class StepResult:
    loss: float  # LM loss, per-token mean over the global batch (identical on every rank)
    grad_norm: float | None
    update_successful: bool
    num_tokens: int
    skipped: bool = False  # NaN/Inf in the loss or gradients: the optimizer did not step


def lm_loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """(sum of masked token losses, token count, report) as megatron-core expects with per-token loss."""
    losses = output_tensor.float()
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(losses.reshape(-1) * mask)
    num_tokens = mask.sum().to(torch.int)
    # The schedule scales the returned loss in place; report a clone (docs/cpu.md gotcha 1).
    report = torch.stack([loss_sum.detach().clone(), num_tokens.detach().clone().float()])
    return loss_sum, num_tokens, {"lm loss": report}


def forward_step(data_iterator, model, *, noise_seed: int | None = None):
    """Forward one micro-batch. The batch dict holds tokens, labels, loss_mask, position_ids and `mb_key`."""
    batch = next(data_iterator)
    if noise_seed is not None:
        noise.seed_microbatch(noise_seed, batch["mb_key"])
    output = model(
        input_ids=batch["tokens"],
        position_ids=batch["position_ids"],
        attention_mask=None,
        labels=batch["labels"],
    )
    if batch["mb_key"][0] + 1 in FAULTS.nan_steps:  # test hook (training.faults)
        output = output * float("nan")
    if FAULTS.kill_rank == (dist.get_rank(), batch["mb_key"][0] + 1):  # test hook: a worker lost mid-step
        os.kill(os.getpid(), signal.SIGKILL)
    return output, partial(lm_loss_func, batch["loss_mask"])


def reduce_lm_loss(losses_reduced: list[dict]) -> tuple[float, int]:
    """Global per-token loss from the micro-batch reports: summed over micro-batches and DP, then broadcast
    from the last pipeline stage so every rank returns the same value."""
    total = torch.zeros(2, dtype=torch.float64, device=rank_device())
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        for report in losses_reduced:
            total += report["lm loss"].to(torch.float64)
        dist.all_reduce(total, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        last = ps.get_pipeline_model_parallel_last_rank()
        dist.broadcast(total, src=last, group=ps.get_pipeline_model_parallel_group())
    tokens = int(total[1].item())
    return (total[0] / max(tokens, 1)).item(), tokens


def micro_batch_iterators(micro_batches: list[dict], num_chunks: int):
    """One iterator per model chunk over the same micro-batches (the interleaved schedule wants a list)."""
    if num_chunks == 1:
        return iter(micro_batches)
    return [iter(micro_batches) for _ in range(num_chunks)]


def train_step(
    ddp_chunks: list,
    optimizer,
    micro_batches: list[dict],
    *,
    seq_length: int,
    micro_batch_size: int,
    noise_seed: int | None = None,
    forward_only: bool = False,
    before_optimizer=None,
) -> StepResult:
    """Run forward+backward over this DP rank's micro-batches of one global batch, then the optimizer.

    `micro_batches` are dicts of [micro_batch_size, seq_length] tensors on this rank's device, each with an
    `mb_key` (global step, global micro-batch index) that seeds the micro-batch's Gumbel noise.
    With `forward_only`, no gradients and no optimizer step (evaluation). `before_optimizer()`, if given, is
    called once the gradients are final (reduced and scaled) and before the optimizer uses them.
    """
    if not forward_only:
        for chunk in ddp_chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=partial(forward_step, noise_seed=noise_seed),
        data_iterator=micro_batch_iterators(micro_batches, len(ddp_chunks)),
        model=ddp_chunks if len(ddp_chunks) > 1 else ddp_chunks[0],
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        decoder_seq_length=seq_length,
        forward_only=forward_only,
    )
    loss, tokens = reduce_lm_loss(losses)
    if forward_only:
        return StepResult(loss, None, False, tokens)
    if before_optimizer is not None:
        before_optimizer()
    if not math.isfinite(loss) or not grads_finite(ddp_chunks):
        return StepResult(loss, float("nan"), False, tokens, skipped=True)
    update_successful, grad_norm, _ = optimizer.step()
    return StepResult(loss, None if grad_norm is None else float(grad_norm), bool(update_successful), tokens)


def grads_finite(ddp_chunks: list) -> bool:
    """True when every rank's reduced gradients are finite (one all-reduce of a flag over the world)."""
    bad = any(not torch.isfinite(buf.grad_data).all() for chunk in ddp_chunks for buf in chunk.buffers)
    flag = torch.tensor([1.0 if bad else 0.0], device=ddp_chunks[0].buffers[0].grad_data.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0
