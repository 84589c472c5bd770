"""Eval-mode forward of the adaptive-depth kinds (versatile, depth_only): spec §4.3, §5, §6 Algorithm 2.

Each token's loop count is argmax(W_loop H) + 1 (no noise) or the forced count. Tokens are processed in a
shrinking active set: loop l runs the FFN only on the tokens whose count is >= l, so no token pays for a deeper
one (the official code runs max(l) loops for the whole batch). The tokens are sorted by count once, so each
loop's active set is a contiguous prefix and the width-path tokens a contiguous suffix. Tokens with l = L_max skip the width path
(router included); the others take it with loop 1's activations (spec §7). Every row is computed independently,
so a token's output equals what it would get alone (up to matmul blocking).

Tensor parallelism: the active set is a function of replicated data, so every TP rank shrinks it identically and
the ranks stay balanced; each rank multiplies its slice of fc1/fc2 and the fc2 partial sums are all-reduced.
Under sequence parallelism the sequence is all-gathered first (the active set spans the whole sequence) and this
rank's shard is cut out of the result. No gradients: this is the inference path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.mappings import (
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
)

from vffn_pretrain.model.ffn.functional import (
    mask_units,
    routed_expert_delta,
    router_logits,
    swiglu,
    topk_gates,
)


@torch.no_grad()
def adaptive_inference(mod, hidden: torch.Tensor, token_weight: torch.Tensor | None) -> torch.Tensor:
    """mod: a VersatileFFN of kind versatile/depth_only. hidden [s, b, h] (s = shard under SP) -> [s, b, h].

    Side effects: statistics of this rank's tokens into mod.ffn_stats; mod.last_loop_work (tokens that ran each
    loop, all tokens of the gathered sequence) and mod.last_width_tokens (tokens that took the width path)."""
    group = mod.tp_group
    tp, rank = group.size(), group.rank()
    sp = mod._sp
    x = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False, group=group) if sp \
        else hidden
    s, b, d = x.shape
    X = x.reshape(s * b, d)
    num_tokens = X.shape[0]
    L = mod.max_loops

    if mod.force_loops is not None:
        if not 1 <= int(mod.force_loops) <= L:
            raise ValueError(f"force_loops={mod.force_loops} is outside 1..{L}")
        loops = torch.full((num_tokens,), int(mod.force_loops), dtype=torch.int64, device=X.device)
    else:
        loops = router_logits(X, mod.loop_head.weight).argmax(-1) + 1

    w1, w2 = mod.linear_fc1.weight, mod.linear_fc2.weight

    def ffn_delta(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = swiglu(F.linear(mod.norm(z), w1))
        delta = F.linear(a, w2)
        if tp > 1:
            delta = reduce_from_tensor_model_parallel_region(delta, group=group)
        return a, delta

    # Grouped early exit: order the tokens by loop count, deepest first. The tokens still running at loop l are
    # then a prefix of that order (rows [0, n_l)), so every loop works on a contiguous slice without gathers, and
    # the width-path tokens (count < L_max) are the contiguous suffix.
    order = torch.argsort(loops, descending=True, stable=True)
    sorted_loops = loops.index_select(0, order)
    per_count = torch.bincount(loops, minlength=L + 1)
    running = per_count.flip(0).cumsum(0).flip(0).tolist()  # running[l] = tokens with count >= l
    z = X.index_select(0, order)
    a1, work = None, []
    for loop in range(1, int(sorted_loops[0]) + 1):
        n = running[loop]
        a, delta = ffn_delta(z[:n])
        if loop == 1:
            a1 = a  # every token runs loop 1
        z[:n] += delta
        work.append(n)

    use_width = mod.kind == "versatile" and not mod.disable_width
    first = running[L] if use_width else num_tokens  # rows [first, T) take the width path
    top_idx = None
    if first < num_tokens:
        hw = X.index_select(0, order[first:])
        gates, top_idx = topk_gates(router_logits(hw, mod.router.weight), mod.ffn_cfg.top_k)
        if tp == 1:  # sparse: k/N of the masked product's work (see VersatileFFN._width_delta)
            dw = routed_expert_delta(a1[first:], gates.gather(-1, top_idx), top_idx, w2, mod.num_experts)
        else:
            dw = F.linear(mask_units(a1[first:], gates, mod.seg_expert, mod.seg_width), w2)
            dw = reduce_from_tensor_model_parallel_region(dw, group=group)
        y_width = hw + dw
        y_depth = z[first:]
        lam = ((L - sorted_loops[first:].to(torch.float32)) / L).unsqueeze(-1)
        if y_width.dtype == torch.float32:
            z[first:] = lam * y_width + (1 - lam) * y_depth
        else:
            z[first:] = (lam * y_width.float() + (1 - lam) * y_depth.float()).to(y_width.dtype)
    out = torch.empty_like(X).index_copy_(0, order, z)
    width_ids = order[first:]
    mod.last_loop_work = work
    mod.last_width_tokens = int(width_ids.numel())

    # Statistics of this rank's own tokens only (rows of its sequence shard under SP), so that summing them over
    # the token-holding ranks counts every token once.
    lo, hi = (rank * (s // tp) * b, (rank + 1) * (s // tp) * b) if sp else (0, num_tokens)
    own = loops[lo:hi]
    counts = None
    if mod.kind == "versatile":
        counts = torch.zeros(mod.num_experts, dtype=torch.float32, device=X.device)
        if top_idx is not None:
            mine = (width_ids >= lo) & (width_ids < hi)
            sel = top_idx[mine].reshape(-1)
            if token_weight is not None:
                w = token_weight.reshape(-1)[width_ids[mine] - lo].repeat_interleave(top_idx.shape[1])
                counts.index_add_(0, sel, w)
            else:
                counts.index_add_(0, sel, torch.ones_like(sel, dtype=torch.float32))
    lam_all = ((L - own.to(torch.float32)) / L) if mod.kind == "versatile" else None
    if mod.kind == "versatile" and mod.disable_width:
        lam_all = torch.zeros_like(lam_all)
    mod.ffn_stats.add(loop_index=own - 1, lam=lam_all, expert_counts=counts, token_weight=token_weight)

    result = out.view(s, b, d)
    if sp:
        result = result.chunk(tp, dim=0)[rank].contiguous()
    return result
