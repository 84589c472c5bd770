"""Choose a pipeline layout: contiguous groups of transformer layers for the p * v chunks (embedding on the first,
LM head + loss on the last), and full recompute on the ranks that do not fit their memory budget otherwise.

A split is a tuple of p * v positive layer counts in model order; chunk c runs on rank c mod p. Given a split,
the recompute setting is decided per rank: none when the rank fits its budget, else full when that fits (it only
adds time), else the split is infeasible. The objective is the simulated step time (`schedule.simulate`).

Search (`plan`): every split when there are at most `exhaustive_limit` of them; otherwise an exact dynamic
programme for the heaviest chunk (minimax over contiguous splits, per-chunk memory check), without
interleaving one for the 1F1B chain bound, the split the window bound below is attained on, and the even split,
each refined by moving single layers between chunks, or two chunk boundaries at once, while the simulated time
improves; with interleaving, the best is then kicked (`KICKS` seeded random multi-layer moves) and refined again,
keeping any improvement.

Lower bound (`lower_bound`): on any split, rank r cannot start before micro-batch 0 has run forward through the
chunks in front of its first chunk r, cannot finish before micro-batch m-1 has run backward through them, and
works m * (its chunks' F + B) in between; so step >= max_r (head_r + m work_r + tail_r). `bounds.window_bound`
generalises this to any window of a rank's fixed operation order (which catches the interleaved schedule's
waits) and minimises it exactly over all splits for v = 1 and 2, with memory and per-rank recompute; for v > 2
the head + work + tail form is relaxed to weighted averages over ranks (each a DP). A single layer's m (f + b)
and one micro-batch's whole chain are bounds too. The optimizer step after the flush adds at least the average
rank's (total parameters / p) to any of them. Ranks that share CPU cores (`cores`) are only slower, so the bound holds.
Where the splits are few enough to simulate them all (`ENUMERATE_LIMIT`), the fastest of them without recompute
or memory budget is a bound as well, and an exact one when memory does not bind.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass, field

from vffn_pretrain.planning.bounds import window_bound, window_bound_split
from vffn_pretrain.planning.costs import ItemCost
from vffn_pretrain.planning.schedule import StepSimulation, rank_order, simulate
from vffn_pretrain.planning.timing import Timing

BYTES_PER_PARAM = 18.0  # bf16 weights, fp32 grads, fp32 master weights and two Adam moments
KICKS = 3  # seeded perturbation restarts of the interleaved search (deterministic: every rank plans alike)
EXHAUSTIVE_LIMIT = 2000  # plan() simulates every split up to this many (it runs at each start-up with `auto`)
ENUMERATE_LIMIT = 5000  # lower_bound simulates every split up to this many (7B, m = 32: about 30 s of CPU)


class PlanError(ValueError):
    """A request no split can satisfy; `key` names the config key to change."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass
class PlanRequest:
    """items: [E, t_1 .. t_n, L] costs; p, v, m: pipeline ranks, virtual stages, micro-batches;
    memory_budget: bytes per device (None: unlimited); bytes_per_param: static bytes per parameter
    (weights, gradients, optimizer state); group: microbatch_group_size_per_vp_stage (default p);
    cores: CPU cores the ranks share (CPU runs of several ranks on one host; None: a device per rank)."""

    items: list[ItemCost]
    p: int
    v: int
    m: int
    timing: Timing
    memory_budget: float | None = None
    bytes_per_param: float = BYTES_PER_PARAM
    group: int | None = None
    allow_recompute: bool = True
    cores: int | None = None

    def __post_init__(self):
        if [self.items[0].symbol, self.items[-1].symbol] != ["E", "L"]:
            raise ValueError("items must start with the embedding and end with the loss")
        if self.p < 1 or self.v < 1 or self.m < 1:
            raise ValueError(f"p, v and m must be positive, got {self.p}, {self.v}, {self.m}")
        if self.num_layers < self.chunks:
            raise PlanError("parallel.pp", f"{self.num_layers} layers cannot fill p x v = {self.p} x {self.v} = "
                                           f"{self.chunks} pipeline chunks (each needs at least one layer)")

    @property
    def num_layers(self) -> int:
        return len(self.items) - 2

    @property
    def chunks(self) -> int:
        return self.p * self.v


@dataclass
class Plan:
    split: tuple[int, ...]
    recompute: list[str]  # per rank
    sim: StepSimulation
    memory: list[float]  # per rank: static + peak activations, bytes
    feasible: bool
    layout: str
    chunk_forward: list[float] = field(default_factory=list)
    chunk_backward: list[float] = field(default_factory=list)

    @property
    def step_time(self) -> float:
        return self.sim.step_time


def layout_string(split: tuple[int, ...]) -> str:
    """megatron-core's pipeline_model_parallel_layout for a split: 'E' + layers | ... | layers + 'L'."""
    parts = ["t" * n for n in split]
    parts[0], parts[-1] = "E" + parts[0], parts[-1] + "L"
    return "|".join(parts)


def parse_layout(layout: str, num_layers: int, p: int) -> tuple[int, ...]:
    """The split of an explicit layout string made of E, t, L and '|' (E first, L last, one t per layer)."""
    chunks = layout.replace(" ", "").split("|")
    if len(chunks) % p:
        raise PlanError("parallel.pipeline_layout", f"{layout!r} has {len(chunks)} stages, not a multiple of "
                                                    f"parallel.pp={p}")
    body = "".join(chunks)
    if not body.startswith("E") or not body.endswith("L") or set(body[1:-1]) - {"t", "|"}:
        raise PlanError("parallel.pipeline_layout", f"{layout!r}: expected E, t..., L separated by '|'")
    split = tuple(c.replace("E", "").replace("L", "").count("t") for c in chunks)
    if sum(split) != num_layers:
        raise PlanError("parallel.pipeline_layout", f"{layout!r} places {sum(split)} layers, the model has "
                                                    f"{num_layers}")
    return split


def _chunk_items(req: PlanRequest, split: tuple[int, ...]) -> list[list[ItemCost]]:
    out, start = [], 1
    for c, n in enumerate(split):
        group = req.items[start:start + n]
        start += n
        if c == 0:
            group = [req.items[0], *group]
        if c == len(split) - 1:
            group = [*group, req.items[-1]]
        out.append(group)
    return out


def evaluate(req: PlanRequest, split: tuple[int, ...], recompute: list[str] | None = None) -> Plan:
    """Simulate a split. Without `recompute`, each rank gets the cheapest setting that fits its budget."""
    if len(split) != req.chunks or sum(split) != req.num_layers or min(split) < 1:
        raise ValueError(f"split {split} does not cut {req.num_layers} layers into {req.chunks} chunks")
    groups = _chunk_items(req, split)
    boundary = req.items[1].input_bytes  # one micro-batch's hidden states cross each stage boundary
    hop = req.timing.p2p_s(boundary) if req.p > 1 else 0.0
    params = [0.0] * req.p
    for c, g in enumerate(groups):
        params[c % req.p] += sum(i.params for i in g)
    static = [n * req.bytes_per_param for n in params]
    optimizer = [req.timing.optimizer_s(n) for n in params]
    choices = [recompute] if recompute else _recompute_choices(req)

    best = None
    for rc in choices:
        chunk_items = [[i.with_recompute(rc[c % req.p]) for i in g] for c, g in enumerate(groups)]
        fwd = [sum(req.timing.forward_s(i) for i in g) for g in chunk_items]
        bwd = [sum(req.timing.backward_s(i) for i in g) for g in chunk_items]
        act = [sum(i.stored_bytes for i in g) for g in chunk_items]
        sim = simulate(fwd, bwd, req.p, req.m, hop, act, req.group, optimizer, req.cores, req.timing.shared_slowdown)
        memory = [s + a for s, a in zip(static, sim.peak_activation_bytes)]
        feasible = req.memory_budget is None or max(memory) <= req.memory_budget
        cand = Plan(tuple(split), list(rc), sim, memory, feasible, layout_string(tuple(split)), fwd, bwd)
        if recompute or feasible:
            return cand
        if best is None or max(memory) < max(best.memory):
            best = cand
    return best


def _recompute_choices(req: PlanRequest) -> list[list[str]]:
    """Recompute settings to try, cheapest first: none, then full on the first k ranks (the early ranks hold the
    most micro-batches), then full everywhere."""
    out = [["none"] * req.p]
    if req.allow_recompute:
        out += [["full"] * k + ["none"] * (req.p - k) for k in range(1, req.p + 1)]
    return out


def _compositions(n: int, k: int):
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        yield tuple(b - a for a, b in zip(bounds, bounds[1:]))


def count_splits(n: int, k: int) -> int:
    return math.comb(n - 1, k - 1)


def brute_force(req: PlanRequest) -> Plan:
    """Simulate every split; the fastest feasible one (or, when none fits, the one with the least memory)."""
    best = None
    for split in _compositions(req.num_layers, req.chunks):
        cand = evaluate(req, split)
        if best is None or _better(cand, best):
            best = cand
    return best


def _better(a: Plan, b: Plan) -> bool:
    if a.feasible != b.feasible:
        return a.feasible
    if not a.feasible:
        return max(a.memory) < max(b.memory)
    return a.step_time < b.step_time - 1e-12 * max(1.0, b.step_time)


def _item_work(req: PlanRequest) -> list[float]:
    return [req.timing.forward_s(i) + req.timing.backward_s(i) for i in req.items]


def minimax_split(req: PlanRequest, weight=None) -> tuple[int, ...] | None:
    """Exact DP: the split minimising max over chunks of weight(c, start, F+B of chunk c) among splits whose
    chunks each fit the budget on their own (static + in-flight micro-batches x bytes, recompute allowed).
    weight defaults to the chunk's work; None when no split fits."""
    n, K = req.num_layers, req.chunks
    work = _item_work(req)
    prefix = [0.0]
    for w in work[1:-1]:
        prefix.append(prefix[-1] + w)
    in_flight = _chunk_in_flight(req)
    INF = math.inf

    def chunk_value(c: int, a: int, b: int) -> float:  # layers a..b-1 (0-based) in chunk c
        items = req.items[1 + a:1 + b] + ([req.items[0]] if c == 0 else []) + ([req.items[-1]] if c == K - 1 else [])
        w = prefix[b] - prefix[a] + (work[0] if c == 0 else 0.0) + (work[-1] if c == K - 1 else 0.0)
        if req.memory_budget is not None:
            static = sum(i.params for i in items) * req.bytes_per_param
            if static + in_flight[c] * sum(i.stored_bytes for i in items) > req.memory_budget:
                if not req.allow_recompute:
                    return INF
                full = [i.with_recompute("full") for i in items]
                if static + in_flight[c] * sum(i.stored_bytes for i in full) > req.memory_budget:
                    return INF
                w = sum(req.timing.forward_s(i) + req.timing.backward_s(i) for i in full)
        return w if weight is None else weight(c, a, w)

    # best[c][b]: min over splits of layers 0..b-1 into chunks 0..c of the max chunk value.
    best = [[INF] * (n + 1) for _ in range(K)]
    arg = [[0] * (n + 1) for _ in range(K)]
    for b in range(1, n + 1):
        best[0][b] = chunk_value(0, 0, b)
    for c in range(1, K):
        for b in range(c + 1, n + 1):
            for a in range(c, b):
                val = max(best[c - 1][a], chunk_value(c, a, b))
                if val < best[c][b]:
                    best[c][b], arg[c][b] = val, a
    if best[K - 1][n] == INF:
        return None
    cuts, b = [], n
    for c in range(K - 1, 0, -1):
        a = arg[c][b]
        cuts.append(b - a)
        b = a
    cuts.append(b)
    return tuple(reversed(cuts))


def _chunk_in_flight(req: PlanRequest) -> list[int]:
    """The most micro-batches of each chunk its rank holds at once (summing these over a rank's chunks bounds
    the rank's true peak from above)."""
    out = [0] * req.chunks
    for r in range(req.p):
        held = [0] * req.chunks
        for op in rank_order(r, req.p, req.v, req.m, req.group):
            held[op.chunk] += 1 if op.kind == "F" else -1
            out[op.chunk] = max(out[op.chunk], held[op.chunk])
    return out


def _chain_weight(req: PlanRequest):
    """1F1B chain term of chunk c starting at layer a: the work in front of it plus m times its own."""
    work = _item_work(req)
    prefix = [work[0]]
    for w in work[1:-1]:
        prefix.append(prefix[-1] + w)

    def weight(c: int, a: int, w: float) -> float:
        return (prefix[a] if c > 0 else 0.0) + req.m * w
    return weight


def _refine(req: PlanRequest, plan: Plan) -> Plan:
    """Move one layer from any chunk to any other (shifting the chunks in between) while the simulated step
    time improves: interleaved plans balance ranks, whose chunks are not adjacent. Where no single move helps,
    shift two chunk boundaries by one layer at once: balancing one rank often unbalances another, so the pair is
    a step down where each half alone is a step up (7B mixed, PP = 8, VPP = 2: 1.050 to 1.048 of the bound)."""
    while True:
        plan = _refine_single(req, plan)
        for split in _boundary_pair_shifts(plan.split):
            cand = evaluate(req, split)
            if _better(cand, plan):
                plan = cand
                break
        else:
            return plan


def _refine_single(req: PlanRequest, plan: Plan) -> Plan:
    improved = True
    while improved:
        improved = False
        for src in range(req.chunks):
            for dst in range(req.chunks):
                if src == dst or plan.split[src] < 2:
                    continue
                split = list(plan.split)
                split[src] -= 1
                split[dst] += 1
                cand = evaluate(req, tuple(split))
                if _better(cand, plan):
                    plan, improved = cand, True
    return plan


def _boundary_pair_shifts(split: tuple[int, ...]):
    """Splits with two different chunk boundaries each moved by one layer (every chunk keeps at least one)."""
    shifts = [(b, d) for b in range(len(split) - 1) for d in (1, -1)]  # d = +1: chunk b takes one from b + 1
    for (b1, d1), (b2, d2) in itertools.combinations(shifts, 2):
        if b1 == b2:
            continue
        out = list(split)
        for b, d in ((b1, d1), (b2, d2)):
            out[b] += d
            out[b + 1] -= d
        if min(out) >= 1:
            yield tuple(out)


def _perturb(split: tuple[int, ...], rng: random.Random) -> tuple[int, ...]:
    """Move one to four single layers between random chunks (each chunk keeps at least one)."""
    out = list(split)
    for _ in range(rng.randint(1, 4)):
        src, dst = rng.sample(range(len(out)), 2)
        if out[src] > 1:
            out[src] -= 1
            out[dst] += 1
    return tuple(out)


def plan(req: PlanRequest, exhaustive_limit: int = EXHAUSTIVE_LIMIT) -> Plan:
    """The fastest feasible plan found (exhaustive when the split space is small). Raises PlanError naming the
    budget key, with the shortfall, when no split fits."""
    if count_splits(req.num_layers, req.chunks) <= exhaustive_limit:
        best = brute_force(req)
    else:
        best = None
        weights = [None] + ([_chain_weight(req)] if req.v == 1 else [])
        starts = [minimax_split(req, w) for w in weights] + [even_split(req.num_layers, req.chunks)]
        if req.v <= 2:
            starts.append(window_bound_split(req)[1])  # the split the lower bound is attained on
        for split in dict.fromkeys(s for s in starts if s is not None):
            cand = _refine(req, evaluate(req, split))
            if best is None or _better(cand, best):
                best = cand
        if req.v > 1:  # interleaved: single-layer moves stall in local optima; kick and climb again
            for seed in range(KICKS):
                cand = _refine(req, evaluate(req, _perturb(best.split, random.Random(seed))))
                if _better(cand, best):
                    best = cand
    if not best.feasible:
        need = max(best.memory)
        raise PlanError("memory budget", f"no layout fits {req.memory_budget / 2**30:.2f} GiB per device: the "
                                         f"best needs {need / 2**30:.2f} GiB, short by "
                                         f"{(need - req.memory_budget) / 2**30:.2f} GiB")
    return best


def even_split(n: int, k: int) -> tuple[int, ...]:
    """n layers over k chunks as evenly as possible (the remainder on the later chunks)."""
    return tuple(n // k + (1 if c >= k - n % k else 0) for c in range(k))


def first_last_split(n: int, k: int) -> tuple[int, ...] | None:
    """megatron's account_for_embedding/loss_in_pipeline_split: the embedding and the loss each count as one
    layer in an even split of n + 2; None when n + 2 is not divisible by k or a chunk would hold no layer."""
    if (n + 2) % k or (n + 2) // k < 2:
        return None
    per = (n + 2) // k
    split = [per] * k
    split[0] -= 1
    split[-1] -= 1
    return tuple(split)


def lower_bound(req: PlanRequest, enumerate_limit: int = ENUMERATE_LIMIT) -> float:
    """A step time no split can beat (see the module docstring). Where there are at most `enumerate_limit`
    splits, also the fastest of them all without recompute and without the memory budget: recompute only adds
    time and a budget only removes splits, so no plan beats it, and it is the tightest bound there is."""
    work = _item_work(req)
    fwd = [req.timing.forward_s(i) for i in req.items]
    bwd = [req.timing.backward_s(i) for i in req.items]
    hop = req.timing.p2p_s(req.items[1].input_bytes) if req.p > 1 else 0.0
    # After the flush the busiest rank's optimizer step runs; on any split it is at least the average.
    optimizer = req.timing.optimizer_s(sum(i.params for i in req.items)) / req.p
    layer = req.m * max(work[1:-1])
    # The last micro-batch's own forward and backward through every item are a chain too.
    path = sum(fwd) + sum(bwd) + 2 * hop * (req.chunks - 1)
    bounds = [layer + optimizer, path + optimizer]
    if req.v <= 2:
        windows = window_bound(req)  # includes each rank's own optimizer step
        if windows == math.inf:  # nothing fits the memory budget: the bound without it
            windows = window_bound(dataclasses.replace(req, memory_budget=None))
        bounds.append(windows)
    else:
        bounds.append(max(_averaged_bound(req, work, hop, alpha) for alpha in _alphas(req.p)) + optimizer)
    if count_splits(req.num_layers, req.chunks) <= enumerate_limit:
        relaxed = dataclasses.replace(req, memory_budget=None, allow_recompute=False)
        bounds.append(min(evaluate(relaxed, split).step_time
                          for split in _compositions(req.num_layers, req.chunks)))
    return max(bounds)


def _alphas(p: int) -> list[list[float]]:
    out = [[1.0 / p] * p]
    for r in range(p):
        out.append([1.0 if i == r else 0.0 for i in range(p)])
    return out


def _averaged_bound(req: PlanRequest, work: list[float], hop: float, alpha: list[float]) -> float:
    """min over splits of sum_r alpha_r (head_r + tail_r + m work_r): chunk c counts with weight
    m alpha_{c mod p} plus, when c < p, the alphas of the ranks whose first chunk comes after it. An additive
    objective, so an exact DP over contiguous splits."""
    n, K, p = req.num_layers, req.chunks, req.p
    kappa = [req.m * alpha[c % p] + (sum(alpha[c + 1:]) if c < p else 0.0) for c in range(K)]
    const = sum(alpha[r] * 2 * hop * r for r in range(p))
    prefix = [0.0]
    for w in work[1:-1]:
        prefix.append(prefix[-1] + w)
    best = [[math.inf] * (n + 1) for _ in range(K)]
    for b in range(1, n + 1):
        best[0][b] = kappa[0] * (prefix[b] + work[0])
    for c in range(1, K):
        for b in range(c + 1, n + 1):
            best[c][b] = min(best[c - 1][a] + kappa[c] * (prefix[b] - prefix[a]) for a in range(c, b))
    return best[K - 1][n] + kappa[K - 1] * work[-1] + const
