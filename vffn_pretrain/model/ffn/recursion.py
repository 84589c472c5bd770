"""Token-sparse recursion: which rows of a micro-batch run each loop with an autograd graph, and the state mix
that the straight-through gradient needs (docs/method.md, "Token-sparse recursion").

A token that sampled l loops has its forward value y = lam * Y_width + (1 - lam) * H^(l), with lam = 0 when
l = L_max. So loops l+1..L_max and (when l = L_max) the width path get no gradient through their values: they are
needed only as numbers, for the loop head's straight-through gradient <g, H^(j)> and for d lam. They run without
an autograd graph, so neither their activations are stored nor their backward pass is paid.

Rows are put in order of decreasing loop count once (`LoopPlan.order`); the rows that run loop j with a graph
are then the prefix [0, graph_rows[j-1]) and the rows whose width path has a graph the suffix
[width_start, T). The same plan, without the no-graph rows, is the eval path's per-token early exit.

Tensors here are row-major [T, 1, h] (T = s * b tokens; the dummy middle dimension keeps megatron's linears,
which expect [s, b, h], happy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

LoopFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoopPlan:
    """How T rows run through the loops.

    order: [T] int64 permutation applied to the rows before the loops (deepest loop count first), or None to keep
        the natural order; graph_rows[j]: rows [0, graph_rows[j]) run loop j+1 with a graph (len = loops run);
    width_start: rows [width_start, T) take the width path with a graph (T: none do)."""

    num_rows: int
    graph_rows: list[int]
    width_start: int
    order: torch.Tensor | None = None

    @classmethod
    def all_rows(cls, num_rows: int, num_loops: int) -> LoopPlan:
        """Every row runs every loop and the width path with a graph (no reordering)."""
        return cls(num_rows, [num_rows] * num_loops, 0)

    @classmethod
    def by_loop_count(cls, counts: torch.Tensor, max_loops: int, width: bool) -> LoopPlan:
        """counts [T] int64 in 1..max_loops: rows sorted by decreasing count; a row keeps its graph for its own
        loops only, and for the width path only when its count is below max_loops (lam > 0).

        One host sync (the per-loop row counts): the shapes of the loops depend on the sampled counts. Every TP
        rank holds identical counts, so every rank gets the same plan."""
        order = torch.argsort(counts, descending=True, stable=True)
        per_count = torch.zeros(max_loops + 1, dtype=torch.int64, device=counts.device)
        per_count.index_add_(0, counts, torch.ones_like(counts))
        at_least = per_count.flip(0).cumsum(0).flip(0).tolist()  # at_least[l] = rows with count >= l
        graph_rows = at_least[1:max_loops + 1]
        return cls(counts.numel(), graph_rows, graph_rows[-1] if width else counts.numel(), order)

    def to_plan_order(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """[T, ...] in the natural order -> the plan's order (differentiable; None stays None)."""
        return rows if self.order is None or rows is None else rows.index_select(0, self.order)

    def to_natural_order(self, rows: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_plan_order` (differentiable)."""
        if self.order is None:
            return rows
        return torch.zeros_like(rows).index_copy(0, self.order, rows)

    @property
    def loop_work(self) -> int:
        """Row-loops computed with a graph."""
        return sum(self.graph_rows)


@dataclass
class LoopState:
    """H^(j) for every row, in two pieces: `graph` rows [0, n) (with autograd graph) and `free` rows [n, T)
    (values only, or None in eval where those rows stopped)."""

    graph: torch.Tensor
    free: torch.Tensor | None


def run_loops(x: torch.Tensor, plan: LoopPlan, loop: LoopFn, keep_free: bool
              ) -> tuple[list[LoopState], torch.Tensor]:
    """Apply `loop` (z -> (activations, next state)) len(plan.graph_rows) times to the rows x [T, 1, h] (in plan
    order). Rows outside a loop's graph prefix run it under no_grad when `keep_free` (training: their values
    feed the straight-through gradient), else not at all (eval early exit).

    Returns the states H^(1..) and loop 1's activations a1 [T, 1, U] (every row runs loop 1 with a graph)."""
    states: list[LoopState] = []
    graph_in, free_in, a1 = x, x[:0], None
    for j, n in enumerate(plan.graph_rows):
        act, graph_out = loop(graph_in[:n]) if n else (None, graph_in[:0])
        if j == 0:
            a1 = act
        free_out = None
        if keep_free:
            with torch.no_grad():
                rest = torch.cat([graph_in[n:].detach(), free_in]) if n < graph_in.shape[0] else free_in
                free_out = loop(rest)[1] if rest.shape[0] else rest
        states.append(LoopState(graph_out, free_out))
        graph_in, free_in = graph_out, free_out
    return states, a1


def final_states(states: list[LoopState], plan: LoopPlan) -> torch.Tensor:
    """Each row's state after its own last loop with a graph: rows [graph_rows[j+1], graph_rows[j]) stop after
    loop j+1. [T, 1, h], differentiable into the graph pieces (the eval path's Y_depth)."""
    ends = plan.graph_rows[1:] + [0]
    pieces = [st.graph[end:] for st, end in zip(states, ends)]
    return torch.cat(pieces[::-1])


class _MixStates(torch.autograd.Function):
    """sum_j p_j * H^(j) with each H^(j) given as (graph rows, free rows), without concatenating them.

    Backward: dp_j = <g, H^(j)> for every row (the straight-through gradient needs every state's value), and
    dH^(j) = p_j * g for the graph rows only. The states are saved as they are: the graph pieces are alive anyway
    (each is the next loop's input), the free pieces are the values the straight-through gradient needs."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, bounds: list[int], *pieces: torch.Tensor) -> torch.Tensor:
        ctx.bounds = bounds
        ctx.save_for_backward(p, *pieces)
        graph, free = pieces[:len(bounds)], pieces[len(bounds):]
        weights = p.to(graph[0].dtype)[..., None, None]  # [T, L, 1, 1]
        out = graph[0].new_zeros(p.shape[0], *graph[0].shape[1:])
        for j, n in enumerate(bounds):
            out[:n] += graph[j] * weights[:n, j]
            out[n:] += free[j] * weights[n:, j]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, *pieces = ctx.saved_tensors
        bounds = ctx.bounds
        graph, free = pieces[:len(bounds)], pieces[len(bounds):]
        grad_p = None
        if ctx.needs_input_grad[0]:
            g32 = grad.float()
            grad_p = torch.stack([
                torch.cat([(g32[:n] * graph[j].float()).sum((-2, -1)), (g32[n:] * free[j].float()).sum((-2, -1))])
                for j, n in enumerate(bounds)], dim=-1)
        weights = p.to(grad.dtype)[..., None, None]
        grads_graph = [grad[:n] * weights[:n, j] if ctx.needs_input_grad[2 + j] else None
                       for j, n in enumerate(bounds)]
        return grad_p, None, *grads_graph, *([None] * len(free))


def mix_states(p: torch.Tensor, states: list[LoopState]) -> torch.Tensor:
    """Y_depth = sum_j p[:, j] * H^(j). p [T, >= len(states)] fp32 (straight-through one-hot, so the forward value
    is exactly each row's selected state), states as from `run_loops(keep_free=True)` -> [T, 1, h]."""
    p = p[:, :len(states)]
    bounds = [st.graph.shape[0] for st in states]
    free = [st.free if st.free is not None else st.graph[:0] for st in states]
    return _MixStates.apply(p, bounds, *[st.graph for st in states], *free)
