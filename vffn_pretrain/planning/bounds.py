"""An exact lower bound on the step time of any split for PP with v = 1 or 2 virtual stages (`window_bound`).

A rank runs its operations in megatron's fixed order (`schedule.rank_order`), one at a time. Take two of them, a
first `k1` and a later `k2`. Operation k1 cannot start before micro-batch 0's forward has crossed the chunks in
front of it (for a backward: the whole forward, then the backward of the chunks behind it), the rank then runs
k1 .. k2 back to back at best, and after k2 the micro-batch still has to cross the rest of the model (after a
forward: the chunks behind, then the whole backward; after a backward: the backward of the chunks in front). So

    step >= est(k1) + sum of the rank's durations from k1 to k2 + tail(k2),

plus the rank's own optimizer step after the flush. est and tail depend only on the operation's kind (F or B) and
chunk, so for each pair of kinds the widest window (first occurrence of one, last of the other) dominates: 4
windows per rank without interleaving, 16 with two virtual stages. The window from the first forward to the last
backward is the familiar head + m x work + tail; the others catch the interleaved schedule's extra waiting (a
rank's second chunk cannot start before micro-batch 0 has gone once around the ring).

The bound of a split is the largest window over its ranks; `window_bound` is its exact minimum over all
contiguous splits, by dynamic programming over the ranks: rank r's chunks are r and r + p, so a state is the pair
of their start layers (and the layer where the second pass begins). Chains through other ranks' chunks use costs
without recompute (the smallest they can be); each rank takes whichever recompute setting (none, full) fits its
memory budget with its exact peak activations (the largest running sum of its forwards minus backwards in the
fixed order) and the smaller window: a superset of the planner's settings, so the bound stays below every plan
the simulator can produce. Ranks sharing CPU cores only run slower, so the bound holds for them too.
"""

from __future__ import annotations

import math

import numpy as np

from vffn_pretrain.planning.schedule import rank_order

KINDS = ("F0", "B0", "F1", "B1")  # forward / backward on the rank's first / second chunk


def _windows(order, first_chunk: int) -> list[tuple[str, str, dict[str, int]]]:
    """(kind of k1, kind of k2, how many operations of each kind k1..k2 holds) for the widest windows."""
    kinds = [f"{op.kind}{0 if op.chunk == first_chunk else 1}" for op in order]
    out = []
    for k1 in KINDS:
        for k2 in KINDS:
            if k1 not in kinds or k2 not in kinds:
                continue
            lo, hi = kinds.index(k1), len(kinds) - 1 - kinds[::-1].index(k2)
            if lo <= hi:
                out.append((k1, k2, {k: kinds[lo:hi + 1].count(k) for k in KINDS}))
    return out


def _held_pairs(order, first_chunk: int) -> list[tuple[int, int]]:
    """The (first chunk, second chunk) micro-batches a rank holds at each moment, without dominated pairs."""
    held, seen = [0, 0], set()
    for op in order:
        j = 0 if op.chunk == first_chunk else 1
        held[j] += 1 if op.kind == "F" else -1
        seen.add(tuple(held))
    return [h for h in seen if not any(o != h and o[0] >= h[0] and o[1] >= h[1] for o in seen)]


class _Prefix:
    """Prefix sums over the layers (items 1 .. n) of one cost, plus the embedding's and the head's."""

    def __init__(self, items, cost):
        self.e, self.l = cost(items[0]), cost(items[-1])
        self.sums = np.concatenate([[0.0], np.cumsum([cost(i) for i in items[1:-1]])])

    def span(self, a, b):  # layers a .. b-1 (arrays broadcast)
        return self.sums[b] - self.sums[a]


def window_bound(req) -> float:
    """min over splits of max over ranks of (widest window + own optimizer step); v must be 1 or 2. inf when
    no split fits the memory budget."""
    return window_bound_split(req)[0]


def window_bound_split(req) -> tuple[float, tuple[int, ...] | None]:
    """window_bound and a split that attains it (None when nothing fits): a good start for the planner."""
    if req.v not in (1, 2):
        raise ValueError("window_bound covers v = 1 and 2")
    p, v, m, K, n = req.p, req.v, req.m, req.chunks, req.num_layers
    t = req.timing
    hop = t.p2p_s(req.items[1].input_bytes) if p > 1 else 0.0
    settings = ["none", "full"] if req.allow_recompute and req.memory_budget is not None else ["none"]
    cost = {}
    for rc in settings:
        items = req.items if rc == "none" else [i.with_recompute(rc) for i in req.items]  # none: as given
        cost[rc] = {"F": _Prefix(items, t.forward_s), "B": _Prefix(items, t.backward_s),
                    "act": _Prefix(items, lambda i: i.stored_bytes)}
    params = _Prefix(req.items, lambda i: i.params)
    F, B = cost["none"]["F"], cost["none"]["B"]
    f_total, b_total = F.e + F.sums[n] + F.l, B.e + B.sums[n] + B.l

    def chains(c, start, end):
        """est / tail of each kind on chunk c covering layers start .. end-1 (chains at the cheapest costs)."""
        f_front = np.where(c > 0, F.e + F.sums[start], 0.0) + c * hop
        b_front = np.where(c > 0, B.e + B.sums[start], 0.0) + c * hop
        f_behind = np.where(c < K - 1, F.sums[n] - F.sums[end] + F.l, 0.0) + (K - 1 - c) * hop
        b_behind = np.where(c < K - 1, B.sums[n] - B.sums[end] + B.l, 0.0) + (K - 1 - c) * hop
        est = {"F": f_front, "B": f_total + (K - 1) * hop + b_behind}
        tail = {"F": f_behind + b_total + (K - 1) * hop, "B": b_front}
        return est, tail

    # What the schedule fixes for each rank, whatever the split: its widest windows and its held micro-batches.
    orders = [rank_order(r, p, v, m, req.group) for r in range(p)]
    windows = [_windows(orders[r], r) for r in range(p)]
    held_pairs = [_held_pairs(orders[r], r) for r in range(p)]

    def rank_value(r, spans):
        """Window bound of rank r + its optimizer step, as an array over its chunks' (start, end) layers;
        spans[j] = (start, end) of its j-th chunk (broadcastable arrays). inf where nothing fits."""
        chunks = [r + j * p for j in range(v)]
        ends = [(chunks[j] == 0, chunks[j] == K - 1) for j in range(v)]
        chain = [chains(chunks[j], *spans[j]) for j in range(v)]
        best = math.inf
        for rc in settings:
            c = cost[rc]
            dur, act = {}, []
            for j, (start, end) in enumerate(spans):
                has_e, has_l = ends[j]
                dur[f"F{j}"] = c["F"].span(start, end) + has_e * c["F"].e + has_l * c["F"].l
                dur[f"B{j}"] = c["B"].span(start, end) + has_e * c["B"].e + has_l * c["B"].l
                act.append(c["act"].span(start, end) + has_e * c["act"].e + has_l * c["act"].l)
            value = -math.inf
            for k1, k2, counts in windows[r]:
                est = chain[int(k1[1])][0][k1[0]]
                tail = chain[int(k2[1])][1][k2[0]]
                work = sum(counts[k] * dur[k] for k in dur if counts.get(k))
                value = np.maximum(value, est + work + tail)
            n_params = sum(params.span(s, e) + ends[j][0] * params.e + ends[j][1] * params.l
                           for j, (s, e) in enumerate(spans))
            value = value + t.optimizer_s(n_params)
            if req.memory_budget is not None:
                peak = -math.inf
                for held in held_pairs[r]:
                    peak = np.maximum(peak, sum(h * a for h, a in zip(held, act)))
                memory = n_params * req.bytes_per_param + peak
                value = np.where(memory <= req.memory_budget, value, math.inf)
            best = np.minimum(best, value)
        return best

    if v == 1:
        return _minimax_v1(n, p, rank_value)
    return _minimax_v2(n, p, rank_value)


def _minimax_v1(n, p, rank_value) -> tuple[float, tuple[int, ...] | None]:
    """best[a]: min over the first r chunks ending at layer a of the largest rank value."""
    idx = np.arange(n + 1)
    start, end = idx[:, None], idx[None, :]
    best = np.full(n + 1, math.inf)
    best[0] = 0.0
    back = []
    for r in range(p):
        value = np.where(end > start, rank_value(r, [(start, np.maximum(end, start))]), math.inf)
        both = np.maximum(best[:, None], value)
        back.append(np.argmin(both, axis=0))
        best = np.min(both, axis=0)
    if best[n] == math.inf:
        return math.inf, None
    ends = [n]
    for r in range(p - 1, 0, -1):
        ends.append(int(back[r][ends[-1]]))
    ends.append(0)
    ends.reverse()
    return float(best[n]), tuple(b - a for a, b in zip(ends, ends[1:]))


def _minimax_v2(n, p, rank_value) -> tuple[float, tuple[int, ...] | None]:
    """For each layer s where the second pass begins: states (start of chunk r, start of chunk r + p)."""
    out, out_split = math.inf, None
    for s in range(p, n - p + 1):  # each pass needs at least p layers
        a = np.arange(s + 1)[:, None, None, None]
        a2 = np.arange(s + 1)[None, :, None, None]
        b = np.arange(s, n + 1)[None, None, :, None]
        b2 = np.arange(s, n + 1)[None, None, None, :]
        ok = (a2 > a) & (b2 > b)
        best = np.full((s + 1, n - s + 1), math.inf)
        best[0, 0] = 0.0
        back = []
        for r in range(p):
            value = rank_value(r, [(a, np.maximum(a2, a)), (b, np.maximum(b2, b))])
            value = np.where(ok, value, math.inf)
            both = np.maximum(best[:, None, :, None], value).transpose(1, 3, 0, 2).reshape(s + 1, n - s + 1, -1)
            back.append(np.argmin(both, axis=2))
            best = np.min(both, axis=2)
        if best[s, n - s] < out:
            out = float(best[s, n - s])
            state, starts = (s, n - s), []
            for r in range(p - 1, -1, -1):
                state = divmod(int(back[r][state]), n - s + 1)
                starts.append(state)
            first = [i for i, _ in reversed(starts)] + [s]
            second = [j + s for _, j in reversed(starts)] + [n]
            out_split = tuple(y - x for x, y in zip(first, first[1:])) + \
                tuple(y - x for x, y in zip(second, second[1:]))
    return out, out_split
