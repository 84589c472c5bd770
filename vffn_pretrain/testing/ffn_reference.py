"""An independent VersatileFFN written from docs/method.md (§2–§6) in plain PyTorch, one token and one expert at a time.

No masking trick (§7), no fused shapes, no megatron: every expert slices its own rows of the global weights and
runs its own SwiGLU, every loop is a full residual FFN, all in the dtype of the inputs (use float64). The
straight-through estimator is the textbook `hard - soft.detach() + soft`. Gradients come from autograd.

Weights use megatron's global layout: W1 [2*d_ff, d] = [gate ; up] (gate first), W2 [d, d_ff].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vffn_pretrain.model.kinds import traits


@dataclass
class RefWeights:
    w1: torch.Tensor  # [2*d_ff, d]
    w2: torch.Tensor  # [d, d_ff]
    norm: torch.Tensor  # [d]
    router: torch.Tensor | None  # [N, d]
    loop_head: torch.Tensor | None  # [L, d]
    eps: float = 1e-6


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean() + eps) * w


def ffn_step(z: torch.Tensor, wt: RefWeights) -> torch.Tensor:
    """F(z) = z + W_out phi(W_proj RMSNorm(z)) for one token z [d]."""
    d_ff = wt.w2.shape[1]
    n = rmsnorm(z, wt.norm, wt.eps)
    gate = wt.w1[:d_ff] @ n
    up = wt.w1[d_ff:] @ n
    return z + wt.w2 @ (F.silu(gate) * up)


def expert_output(h: torch.Tensor, e: int, num_experts: int, wt: RefWeights) -> torch.Tensor:
    """Y_e(H) = H + W_out^(e) phi(W_proj^(e) RMSNorm(H)) (spec Eq. 8), expert e = units [e*d_ff/N, (e+1)*d_ff/N)."""
    d_ff = wt.w2.shape[1]
    width = d_ff // num_experts
    units = torch.arange(e * width, (e + 1) * width)
    n = rmsnorm(h, wt.norm, wt.eps)
    gate = wt.w1.index_select(0, units) @ n
    up = wt.w1.index_select(0, units + d_ff) @ n
    return h + wt.w2.index_select(1, units) @ (F.silu(gate) * up)


def width_path(h: torch.Tensor, wt: RefWeights, num_experts: int, top_k: int):
    """(Y_width [d], router logits [N], chosen experts [k]) for one token (docs/method.md §3.3)."""
    logits = wt.router @ h
    top = torch.topk(logits, top_k).indices
    g = torch.softmax(logits[top], dim=0)
    y = sum(g[j] * expert_output(h, int(top[j]), num_experts, wt) for j in range(top_k))
    return y, logits, top


def reference(H: torch.Tensor, wt: RefWeights, *, kind: str, num_experts: int = 8, top_k: int = 2,
              max_loops: int = 4, loops: int = 4, noise: torch.Tensor | None = None, tau: float = 1.0,
              training: bool = True, balance_coeff: float = 0.0):
    """H [T, d] -> (Y [T, d], aux loss (0-d), per-token loop counts [T], per-token width flag [T]).

    kind: versatile | depth_only | width_only | kloop. noise [T, L]: the Gumbel noise (training only).
    The aux loss is alpha * L_bal * T (the term whose gradient the module attaches), over these T tokens."""
    T = H.shape[0]
    made_of = traits(kind)
    outs, loop_counts, took_width, router_rows, chosen = [], [], [], [], []
    for t in range(T):
        h = H[t]
        if made_of.fixed_loops:
            z = h
            for _ in range(loops):
                z = ffn_step(z, wt)
            outs.append(z)
            loop_counts.append(loops)
            took_width.append(False)
            continue
        if made_of.width_folded:
            y_w, logits, top = width_path(h, wt, num_experts, top_k)
            # dense FFN always on + routed virtual experts (residual once): F(H) + (Y_width - H)
            g = torch.softmax(logits[top], dim=0)
            routed = sum(g[j] * (expert_output(h, int(top[j]), num_experts, wt) - h) for j in range(top_k))
            outs.append(ffn_step(h, wt) + routed)
            router_rows.append(logits)
            chosen.append(top)
            loop_counts.append(1)
            took_width.append(True)
            continue
        # adaptive depth (versatile / depth_only)
        P = wt.loop_head @ h
        if training:
            y_soft = torch.softmax((P + noise[t]) / tau, dim=0)
            hard = F.one_hot(torch.argmax(P + noise[t]), max_loops).to(H.dtype)
            p = hard - y_soft.detach() + y_soft
        else:
            p = F.one_hot(torch.argmax(P), max_loops).to(H.dtype)
        states, z = [], h
        for _ in range(max_loops):
            z = ffn_step(z, wt)
            states.append(z)
        y_depth = sum(p[i] * states[i] for i in range(max_loops))
        count = int(torch.argmax(p.detach())) + 1
        loop_counts.append(count)
        if not made_of.width_path:
            outs.append(y_depth)
            took_width.append(False)
            continue
        expected = sum((i + 1) * p[i] for i in range(max_loops))
        lam = (max_loops - expected) / max_loops
        if not training and count == max_loops:
            outs.append(y_depth)  # lambda = 0: the width path is skipped
            took_width.append(False)
            continue
        y_w, logits, top = width_path(h, wt, num_experts, top_k)
        router_rows.append(logits)
        chosen.append(top)
        took_width.append(True)
        outs.append(lam * y_w + (1 - lam) * y_depth)
    Y = torch.stack(outs)
    aux = H.new_zeros(())
    if balance_coeff and router_rows and training:
        probs = torch.softmax(torch.stack(router_rows), dim=-1)  # [T, N]
        counts = torch.zeros(num_experts, dtype=H.dtype)
        for top in chosen:
            counts[top] += 1
        f = counts / (len(chosen) * top_k)
        P_mean = probs.mean(0)
        l_bal = num_experts * (f * P_mean).sum()
        aux = balance_coeff * l_bal * len(chosen)
    return Y, aux, torch.tensor(loop_counts), torch.tensor(took_width)
