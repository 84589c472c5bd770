"""Switch-style load-balancing loss (docs/method.md §3.4, §12 #6), attached to the backward pass only.

L_bal = N * sum_e f_e * P_e, f_e = share of the top-k assignments that go to expert e, P_e = mean router
probability (softmax over all N) of expert e. Both are measured over the tokens of one "global micro-batch": the
same micro-batch index on every rank that holds different tokens (DP, and TP under sequence parallelism), so the
statistics are all-reduced over that group once per layer and micro-batch (2N + 1 floats).

Scale. The step runs with calculate_per_token_loss: megatron sums the LM loss over tokens and, after the backward
pass, multiplies every gradient by 1 / (loss tokens of the global batch). To contribute the token-weighted mean
of alpha * L_bal over micro-batches, a micro-batch of T_g tokens must add alpha * L_bal * T_g to the summed loss.
Its gradient, split over the ranks of the group, is alpha * N * sum_e f_e * grad(sum of p_e over the rank's own
tokens) (f is a count, no gradient), so each rank attaches A_r = alpha * N * sum_e f_e * S_e,r with S_e,r the sum
of its own tokens' probabilities; the ranks' gradient contributions add up through DDP (and, under sequence
parallelism, through the TP all-reduce of the router weight, which is marked `sequence_parallel`).

Layers. Each layer attaches its own term with alpha / num_layers (the caller passes that as `alpha`), so the model
adds alpha times the mean of the per-layer L_bal over its layers (docs/method.md §12 #6), not their sum as megatron's MoE
aux losses do.

The attached value never enters the forward output, so the reported LM loss is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on `output`; in the backward pass `aux` receives d(aux) = the main loss's scale (1, or the fp16
    loss scale) so autograd adds grad(aux) to whatever produced it."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux: torch.Tensor, scale_fn: Callable | None) -> torch.Tensor:
        ctx.save_for_backward(aux)
        ctx.scale_fn = scale_fn
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (aux,) = ctx.saved_tensors
        scale = torch.ones_like(aux)
        if ctx.scale_fn is not None:
            # megatron scales the main loss by config.grad_scale_func (the optimizer's loss scale) before its
            # backward pass; the auxiliary term must be scaled the same way.
            scale = ctx.scale_fn(scale)
        return grad, scale, None


def attach_aux_loss(output: torch.Tensor, aux: torch.Tensor, config=None) -> torch.Tensor:
    """Return `output` (same values) with `aux` (a 0-d tensor with a graph) joined to its backward pass."""
    scale_fn = getattr(config, "grad_scale_func", None) if config is not None else None
    return _AttachAuxLoss.apply(output, aux, scale_fn)


@dataclass
class BalanceTerms:
    """One micro-batch's balance loss on one rank.

    attach: alpha * N * sum_e f_e * S_e (0-d fp32, with a graph to the router) to pass to `attach_aux_loss`;
    value: L_bal = N * sum_e f_e * P_e over the group's tokens (0-d fp32, no graph, identical on the group);
    counts: this rank's top-k assignments per expert [N] (float, no graph); tokens: this rank's token count."""

    attach: torch.Tensor
    value: torch.Tensor
    counts: torch.Tensor
    tokens: torch.Tensor


def switch_balance(probs: torch.Tensor, assignments: torch.Tensor, top_k: int, alpha: float,
                   group: dist.ProcessGroup | None, token_weight: torch.Tensor | None = None) -> BalanceTerms:
    """Switch balance terms from this rank's tokens.

    probs [T, N] fp32: softmax of the router logits over all N experts (with a graph);
    assignments [T, N]: 1 where the token picked the expert in its top-k, else 0 (any dtype, no graph);
    group: the ranks holding the other tokens of this micro-batch (None or size 1: this rank alone);
    token_weight [T] (optional): 0 for padding tokens, which then count nowhere.
    """
    num_experts = probs.shape[-1]
    assign = assignments.to(torch.float32)
    if token_weight is not None:
        w = token_weight.to(torch.float32).unsqueeze(-1)
        probs = probs * w
        assign = assign * w
        tokens = token_weight.to(torch.float32).sum()
    else:
        tokens = probs.new_full((), float(probs.shape[0]))  # a fill kernel: torch.tensor() would sync on a GPU
    counts = assign.sum(0)
    prob_sum = probs.sum(0)
    stats = torch.cat([counts, prob_sum.detach(), tokens.reshape(1)])
    if group is not None and dist.get_world_size(group) > 1:
        stats = stats.clone()
        dist.all_reduce(stats, group=group)
    g_counts, g_prob, g_tokens = stats[:num_experts], stats[num_experts:2 * num_experts], stats[-1]
    denom = g_tokens.clamp_min(1.0)
    f = g_counts / (denom * top_k)
    value = num_experts * (f * g_prob / denom).sum()
    attach = alpha * num_experts * (f * prob_sum).sum()
    return BalanceTerms(attach=attach, value=value.detach(), counts=counts.detach(), tokens=tokens.detach())
