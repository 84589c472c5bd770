"""Tensor maths of VersatileFFN (docs/method.md §3–§5, §7), free of modules and process groups.

Shapes use `...` for the token dims ([s, b] in megatron's layout, or a flat [T]); `h` is the hidden size, `U` a
rank's local hidden units of the FFN (d_ff / TP), `N` the number of (virtual) experts, `L` the number of loops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """megatron-core's GLU layout: fc1's output is [gate ; up] per rank, so phi = SiLU(gate) * up.
    [..., 2U] -> [..., U], same dtype."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


class _HeadLogits(torch.autograd.Function):
    """hidden @ weight.T accumulated in float64 and rounded to fp32 once; the backward in float64 too.

    Why float64: the logits decide (top-k experts, sampled loop counts), and an fp32 GEMM on a GPU may run in
    TF32 (transformer-engine always does, NGC images force it for torch), whose 10-bit mantissa moves logits by
    ~1e-3 and flips near-tie decisions. In float64 the decisions depend on the inputs only: the same on CPU and
    GPU, with or without TF32. The head is d x (N or L_max), so the float64 products cost next to nothing.
    Saves `hidden` as it is (the layer's input, which autograd keeps anyway), not an fp32 copy."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight)
        return F.linear(hidden.double(), weight.double()).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        g = grad.double()
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (g @ weight.double()).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            flat_g = g.reshape(-1, g.shape[-1])
            grad_weight = (flat_g.T @ hidden.reshape(-1, hidden.shape[-1]).double()).to(weight.dtype)
        return grad_hidden, grad_weight


def router_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a bias-free head on the un-normalised stream (docs/method.md §12 #3, #4, #8), accumulated
    in float64 (see _HeadLogits: decisions independent of TF32). hidden [..., h] (any dtype), weight [out, h]
    -> [..., out] fp32."""
    return _HeadLogits.apply(hidden, weight)


def topk_gates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the raw logits, softmax over the k selected only (docs/method.md §3.3), in fp32.

    logits [..., N] fp32 -> (gates [..., N] fp32, zero outside the top-k, summing to 1; indices [..., k] int64).
    """
    top_val, top_idx = torch.topk(logits, k, dim=-1)
    weights = torch.softmax(top_val, dim=-1)
    gates = torch.zeros_like(logits).scatter(-1, top_idx, weights)
    return gates, top_idx


class _StraightThroughOneHot(torch.autograd.Function):
    """Forward: the exact one-hot `hard`; backward: the incoming gradient goes to `soft` unchanged.

    `hard - soft.detach() + soft` is the textbook form, but in floating point it is not exactly the one-hot, and
    the forward value must be exactly H^(l_sampled) mixed with the width path (docs/method.md §4.2, §5)."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        return hard

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def gumbel_straight_through(logits: torch.Tensor, noise: torch.Tensor, tau: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard Gumbel-softmax with the straight-through estimator (docs/method.md §4.2), all in fp32.

    logits, noise [..., L] fp32 -> (p [..., L] fp32: forward one-hot of argmax(logits + noise), backward the
    gradient of softmax((logits + noise) / tau); index [...] int64 of the sampled loop count minus one).
    """
    perturbed = logits + noise
    index = perturbed.argmax(dim=-1)
    soft = torch.softmax(perturbed / tau, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
    return _StraightThroughOneHot.apply(soft, hard), index


def expected_loops(p: torch.Tensor) -> torch.Tensor:
    """sum_l l * p[..., l-1]: the loop count a (straight-through one-hot) p selects. p [..., L] fp32 -> [...] fp32."""
    steps = torch.arange(1, p.shape[-1] + 1, device=p.device, dtype=torch.float32)
    return (p * steps).sum(-1)


def fusion_weight(loops: torch.Tensor, max_loops: int) -> torch.Tensor:
    """lambda = (L_max - loops) / L_max (method §5): the width path's share, 0 for tokens that run every loop.
    loops [...] (counts, or `expected_loops`) -> [...] fp32."""
    return (max_loops - loops.to(torch.float32)) / max_loops


class _Fuse(torch.autograd.Function):
    """lam * y_width + (1 - lam) * y_depth computed in fp32 and rounded once to the states' dtype.

    Written out as autograd would differentiate the fp32 expression (bitwise the same gradients), but it saves
    y_width and y_depth in their own dtype: autograd would keep their fp32 copies for d lam, 2 x [T, h] fp32 per
    layer."""

    @staticmethod
    def forward(ctx, lam: torch.Tensor, y_width: torch.Tensor, y_depth: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(lam, y_width, y_depth)
        lam = _per_row(lam, y_width)
        return (lam * y_width.float() + (1 - lam) * y_depth.float()).to(y_width.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        lam, y_width, y_depth = ctx.saved_tensors
        per_row = _per_row(lam, y_width)
        g = grad.float()
        grad_lam = grad_width = grad_depth = None
        if ctx.needs_input_grad[0]:
            grad_lam = ((g * y_width.float()).sum_to_size(per_row.shape)
                        - (g * y_depth.float()).sum_to_size(per_row.shape)).reshape(lam.shape)
        if ctx.needs_input_grad[1]:
            grad_width = (g * per_row).to(y_width.dtype)
        if ctx.needs_input_grad[2]:
            grad_depth = (g * (1 - per_row)).to(y_depth.dtype)
        return grad_lam, grad_width, grad_depth


def _per_row(lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """lam [T] -> [T, 1, ...] broadcasting over y's trailing dims."""
    return lam.reshape(lam.shape + (1,) * (y.dim() - lam.dim()))


def fuse(lam: torch.Tensor, y_width: torch.Tensor, y_depth: torch.Tensor) -> torch.Tensor:
    """Y = lambda * Y_width + (1 - lambda) * Y_depth. lam [T] fp32 (one per leading row of y), y_* [T, ..., h]
    (same dtype). Low-precision states are mixed in fp32 and rounded once; autograd keeps no fp32 copy of them
    (_Fuse)."""
    return _Fuse.apply(lam, y_width, y_depth)


def blend_in(h1: torch.Tensor, y: torch.Tensor, s: float) -> torch.Tensor:
    """H^(1) + s * (Y - H^(1)) (docs/method.md §15): the dense layer's output at s = 0 (exactly: the difference is
    multiplied by zero), the kind's own output Y at s = 1, where the caller skips this. h1, y [T, ..., h], same
    dtype. Y stays in the graph at s = 0, so a balance loss attached to it still reaches the router."""
    return h1 + s * (y - h1)


def expert_segments(d_ff: int, num_experts: int, tp_rank: int, tp_size: int) -> tuple[torch.Tensor, int]:
    """How this TP rank's local hidden units split into virtual-expert slices.

    Expert e owns global units [e*d_ff/N, (e+1)*d_ff/N) in both the gate and up halves (docs/method.md §3.1). Rank r holds
    global units [r*U, (r+1)*U), U = d_ff/TP (megatron's stride-2 GLU split keeps the halves aligned). Cutting the
    local units into segments of width gcd(U, d_ff/N) gives pieces that each belong to exactly one expert, for
    any N and TP that divide d_ff. Returns (expert index of each local segment [n_seg] int64, segment width).
    """
    local = d_ff // tp_size
    width = math.gcd(local, d_ff // num_experts)
    starts = tp_rank * local + torch.arange(0, local, width)
    return (starts // (d_ff // num_experts)).to(torch.int64), width


def mask_units(act: torch.Tensor, gates: torch.Tensor, seg_expert: torch.Tensor, seg_width: int,
               offset: float = 0.0) -> torch.Tensor:
    """m ⊙ a₁ of docs/method.md §7 on this rank's units: each unit scaled by (offset + its expert's gate).

    act [..., U] (model dtype), gates [..., N] fp32 (the full N, replicated on every TP rank) -> [..., U].
    offset=1 gives the width_only ablation's (1 + m) ⊙ a₁ (dense FFN always on plus the routed experts)."""
    seg_gates = gates.index_select(-1, seg_expert).to(act.dtype)
    if offset:
        seg_gates = seg_gates + offset
    shape = act.shape
    return (act.view(*shape[:-1], -1, seg_width) * seg_gates.unsqueeze(-1)).view(shape)


def routed_expert_delta(act: torch.Tensor, top_weight: torch.Tensor, top_idx: torch.Tensor,
                        weight_out: torch.Tensor, num_experts: int) -> torch.Tensor:
    """sum_j g_j * W_out[:, I(e_j)] @ a1[I(e_j)] per token, each expert multiplying only its own tokens' slices.

    The sparse form of the width path's fc2 (docs/method.md §7: k/N of the masked-dense product's work), for when one
    rank holds every hidden unit (TP=1); under TP it would leave the ranks holding popular experts with more
    work, so the masked-dense form is used there. act [T, d_ff] (loop 1's activations), top_weight [T, k] fp32,
    top_idx [T, k], weight_out [h, d_ff] -> [T, h] in act's dtype. Differentiable in act, top_weight, weight_out.
    """
    T, units = act.shape
    k = top_idx.shape[1]
    width = units // num_experts
    flat = top_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)  # assignments grouped by expert
    tokens = torch.div(order, k, rounding_mode="floor")
    experts = flat.index_select(0, order)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    # One gather of every assignment's slice: row t*N + e of the [T*N, width] view is a1[t, I(e)].
    slices = act.reshape(T * num_experts, width).index_select(0, tokens * num_experts + experts)
    outs, start = [], 0
    for e, n in enumerate(counts):
        if n:
            outs.append(F.linear(slices[start:start + n], weight_out[:, e * width:(e + 1) * width]))
        start += n
    gate = top_weight.reshape(-1).index_select(0, order).to(act.dtype).unsqueeze(-1)
    contrib = torch.cat(outs) * gate
    return act.new_zeros(T, weight_out.shape[0]).index_add(0, tokens, contrib)
