"""What megatron-core 0.16.1's pipeline schedules refuse, checked before any process starts (plain arithmetic).

Each rule is read from megatron's own code, named in its function; the trainer's config validation and `vffn-plan`
both ask here, so a run or a plan megatron would stop at its first step is refused up front with one line.
"""

from __future__ import annotations


def interleaving_problem(p: int, v: int, m: int, group: int | None = None) -> str | None:
    """Why megatron's interleaved schedule refuses m micro-batches at PP = p, VPP = v, or None when it runs them.

    The rules are those `forward_backward_pipelining_with_interleaving` (megatron/core/pipeline_parallel/
    schedules.py) checks before its first forward: the group size g (`microbatch_group_size_per_vp_stage`, which
    TransformerConfig sets to p when unset) must lie in [p, m], and the last group, m mod g, must be empty or hold
    at least p micro-batches. With the default g = p that means m must be a multiple of p."""
    if p < 2 or v < 2:
        return None
    g = p if group is None else group
    if not p <= g <= m:
        if g == p:
            return f"{m} micro-batches at PP={p}: megatron's interleaved schedule (VPP={v}) needs at least PP = {p}"
        return f"microbatch group size {g} must lie between PP={p} and the {m} micro-batches"
    last = m % g
    if 0 < last < p:
        if g == p:
            return (f"{m} micro-batches at PP={p}: megatron's interleaved schedule (VPP={v}) needs a multiple of "
                    f"PP = {p}")
        return f"{m} micro-batches leave a last group of {last} < PP={p} (microbatch group size {g})"
    return None


def overlap_problem(p: int, v: int, overlap_p2p_comm: bool) -> str | None:
    """megatron's `forward_backward_pipelining_without_interleaving` raises on overlap_p2p_comm: the overlap exists
    only in the interleaved schedule (which also refuses it together with batch_p2p_comm; the model config turns
    batched P2P off whenever VPP is on). Without a pipeline (p = 1) megatron ignores the setting."""
    if overlap_p2p_comm and p > 1 and v < 2:
        return "megatron overlaps P2P communication only in its interleaved schedule (parallel.vpp > 1)"
    return None
