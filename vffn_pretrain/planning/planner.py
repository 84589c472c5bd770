"""Choose a pipeline layout: contiguous groups of transformer layers for the p * v chunks (embedding on the first,
LM head + loss on the last), and full recompute on the ranks that do not fit their memory budget otherwise.

A split is a tuple of p * v positive layer counts in model order; chunk c runs on rank c mod p. Any layout the
trainer accepts (chunks holding only the embedding or the loss, or nothing: `planning/layout.py`) is a cut of the
items [E, t_1 .. t_n, L] and can be timed (`evaluate_cuts`); the search covers splits. Given a layout, the
recompute setting is decided per rank: the items' own when the rank fits its budget, else full when that fits (it
only adds time), else the layout is infeasible. The objective is the simulated step time under the schedule the
run uses (`schedule.py`: megatron's 1F1B, or its interleaved schedule with or without `overlap_p2p_comm`);
`_Costs` times many layouts at once.

Search (`plan`): every split when simulating them all costs at most `EXHAUSTIVE_WORK` op evaluations; otherwise
local search from several starts: an exact dynamic programme for the heaviest chunk (minimax over contiguous
splits, per-chunk memory check), without interleaving one for the 1F1B chain bound, the split the window bound
below is attained on, the even split and the front-loaded near-even split. Each start is climbed by moving one
layer between any two chunks, or two chunk boundaries by one layer at once (balancing one rank often unbalances
another, so the pair is a step down where each half alone is a step up), taking the best neighbour while the
simulated time improves. With interleaving, the landscape has many local optima (ranks hold non-adjacent
chunks), so the search then restarts `RESTARTS` times from seeded random kicks of the best split (one to four
layers moved) and from seeded random splits, keeping any improvement (deterministic: the same inputs give the
same plan).

Lower bound (`lower_bound`): on any split, rank r cannot start before micro-batch 0 has run forward through the
chunks in front of its first chunk r, cannot finish before micro-batch m-1 has run backward through them, and
works m * (its chunks' F + B) in between; so step >= max_r (head_r + m work_r + tail_r). `bounds.window_bound`
generalises this to any window of a rank's fixed operation order (which catches the interleaved schedule's
waits) and minimises it exactly over all splits for v = 1 and 2, with memory and per-rank recompute; for v > 2
the head + work + tail form is relaxed to weighted averages over ranks (each a DP). A single layer's m (f + b)
and one micro-batch's whole chain are bounds too. The optimizer step after the flush adds at least the average
rank's (total parameters / p) to any of them. Ranks that share CPU cores (`cores`) are only slower, and
megatron's schedule without `overlap_p2p_comm` only adds waits to the one with it, so the bound holds for both.
Where the splits are few enough to simulate them all (`ENUMERATE_WORK`), the fastest of them without recompute
or memory budget is a bound as well, and an exact one when memory does not bind.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass

import numpy as np

from vffn_pretrain.parallel.pipeline_rules import interleaving_problem, overlap_problem
from vffn_pretrain.planning import layout as layouts
from vffn_pretrain.planning.bounds import window_bound, window_bound_split
from vffn_pretrain.planning.costs import ItemCost
from vffn_pretrain.planning.schedule import StepSimulation, rank_order, schedule, simulate
from vffn_pretrain.planning.timing import Timing

BYTES_PER_PARAM = 18.0  # bf16 weights, fp32 grads, fp32 master weights and two Adam moments
RESTARTS = 24  # seeded restarts of the interleaved search (kicks of the best split and random splits)
EXHAUSTIVE_WORK = 2e7  # plan() simulates every split when splits x ops is at most this (about a second)
ENUMERATE_WORK = 4e7  # lower_bound simulates every split up to this much work
BATCH = 4096  # splits timed at once


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
    allow_recompute: the planner may turn on full recompute per rank; cores: CPU cores the ranks share (CPU runs of
    several ranks on one host; None: a device per rank); overlap_p2p_comm: megatron's setting of that name, which
    picks the schedule's code path (None: megatron-LM's default, on with interleaving). Raises PlanError (key
    `micro-batches`) for a micro-batch count megatron's interleaved schedule refuses, and (key
    `parallel.overlap_p2p_comm`) for the overlap without interleaving, which megatron refuses too."""

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
    overlap_p2p_comm: bool | None = None

    def __post_init__(self):
        if [self.items[0].symbol, self.items[-1].symbol] != ["E", "L"]:
            raise ValueError("items must start with the embedding and end with the loss")
        if self.p < 1 or self.v < 1 or self.m < 1:
            raise ValueError(f"p, v and m must be positive, got {self.p}, {self.v}, {self.m}")
        if self.p == 1 or self.overlap_p2p_comm is None:
            self.overlap_p2p_comm = self.p > 1 and self.v > 1
        elif overlap_problem(self.p, self.v, self.overlap_p2p_comm):
            raise PlanError("parallel.overlap_p2p_comm", overlap_problem(self.p, self.v, self.overlap_p2p_comm))
        problem = interleaving_problem(self.p, self.v, self.m, self.group)
        if problem:
            raise PlanError("micro-batches", problem)

    @property
    def num_layers(self) -> int:
        return len(self.items) - 2

    @property
    def chunks(self) -> int:
        return self.p * self.v

    def check_plannable(self) -> None:
        """The search gives every chunk at least one layer (layouts with empty chunks can still be evaluated)."""
        if self.num_layers < self.chunks:
            raise PlanError("parallel.pp", f"{self.num_layers} layers cannot fill p x v = {self.p} x {self.v} = "
                                           f"{self.chunks} pipeline chunks (each needs at least one layer)")


@dataclass
class Plan:
    split: tuple[int, ...]  # transformer layers per chunk
    recompute: list[str]  # per rank
    sim: StepSimulation
    memory: list[float]  # per rank: static + peak activations, bytes
    feasible: bool
    layout: str
    chunk_forward: list[float]
    chunk_backward: list[float]
    cuts: tuple[int, ...]  # item index where each chunk starts, then the item count (layout.py)

    @property
    def step_time(self) -> float:
        return self.sim.step_time


def layout_string(split: tuple[int, ...]) -> str:
    """megatron-core's pipeline_model_parallel_layout for a split: 'E' + layers | ... | layers + 'L'."""
    return layouts.layout_string(layouts.split_cuts(split))


def layout_cuts(layout: str, num_layers: int, p: int) -> tuple[int, ...]:
    """The item cuts of an explicit layout string; PlanError naming parallel.pipeline_layout when megatron would
    refuse it."""
    try:
        return layouts.read(layout, p, num_layers)
    except layouts.LayoutError as e:
        raise PlanError("parallel.pipeline_layout", f"{layout!r}: {e}") from None


def _chunk_items(req: PlanRequest, split: tuple[int, ...]) -> list[list[ItemCost]]:
    cuts = layouts.split_cuts(split)
    return [req.items[a:b] for a, b in zip(cuts, cuts[1:])]


def _recompute_choices(req: PlanRequest) -> list[list[str]]:
    """Recompute settings to try, cheapest first: the items as given ('none'), then full on the first k ranks
    (the early ranks hold the most micro-batches), then full everywhere."""
    out = [["none"] * req.p]
    if req.allow_recompute:
        out += [["full"] * k + ["none"] * (req.p - k) for k in range(1, req.p + 1)]
    return out


class _Costs:
    """What timing many layouts of one request needs: prefix sums of the items' forward and backward seconds and
    stored bytes (as given, and under full recompute) and parameters, and the compiled schedule."""

    def __init__(self, req: PlanRequest):
        t = req.timing
        self.req = req
        self.sched = schedule(req.p, req.v, req.m, req.group, req.overlap_p2p_comm)
        self.hop = t.p2p_s(req.items[1].input_bytes) if req.p > 1 else 0.0
        self.prefix = {}
        for rc in ("none", "full"):
            items = req.items if rc == "none" else [i.with_recompute(rc) for i in req.items]
            self.prefix[rc] = [np.concatenate([[0.0], np.cumsum(values)]) for values in (
                [t.forward_s(i) for i in items], [t.backward_s(i) for i in items], [i.stored_bytes for i in items])]
        self.params = np.concatenate([[0.0], np.cumsum([i.params for i in req.items])])
        self.shared = req.cores is not None and (req.cores < req.p or bool(req.timing.shared_slowdown))

    def chunk_costs(self, cuts: np.ndarray, rc: list[str]):
        """[batch, chunks] forward s, backward s, stored bytes per micro-batch under per-rank recompute rc."""
        lo, hi = cuts[:, :-1], cuts[:, 1:]
        full = np.array([rc[c % self.req.p] == "full" for c in range(self.req.chunks)])
        return [np.where(full, f[hi] - f[lo], n[hi] - n[lo]) for n, f in zip(self.prefix["none"], self.prefix["full"])]

    def rank_params(self, cuts: np.ndarray) -> np.ndarray:
        per_chunk = self.params[cuts[:, 1:]] - self.params[cuts[:, :-1]]
        return np.stack([per_chunk[:, r::self.req.p].sum(axis=1) for r in range(self.req.p)], axis=1)

    def memory(self, cuts: np.ndarray, rc: list[str]) -> np.ndarray:
        """[batch, p] bytes per rank: static + peak activations."""
        act = self.chunk_costs(cuts, rc)[2]
        return self.rank_params(cuts) * self.req.bytes_per_param + self.sched.peak_activations(act)

    def step_times(self, cuts: np.ndarray, rc: list[str]) -> np.ndarray:
        fwd, bwd, act = self.chunk_costs(cuts, rc)
        optimizer = self.req.timing.optimizer_s(self.rank_params(cuts)).max(axis=1)
        if self.shared:
            return np.array([self.simulate(f, b, a, cuts[j]).step_time
                             for j, (f, b, a) in enumerate(zip(fwd, bwd, act))])
        return self.sched.pipeline_times(fwd, bwd, self.hop) + optimizer

    def simulate(self, fwd, bwd, act, cuts) -> StepSimulation:
        params = self.rank_params(np.asarray([cuts]))[0]
        req = self.req
        return simulate(list(fwd), list(bwd), req.p, req.m, self.hop, list(act), req.group,
                        [req.timing.optimizer_s(x) for x in params], req.cores, req.timing.shared_slowdown,
                        req.overlap_p2p_comm)

    def choose(self, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index into _recompute_choices per layout (the first that fits, else the one needing least memory),
        and whether it fits."""
        choices = _recompute_choices(self.req)
        if self.req.memory_budget is None:
            return np.zeros(len(cuts), int), np.ones(len(cuts), bool)
        peaks = np.stack([self.memory(cuts, rc).max(axis=1) for rc in choices], axis=1)
        fits = peaks <= self.req.memory_budget
        chosen = np.where(fits.any(axis=1), fits.argmax(axis=1), peaks.argmin(axis=1))
        return chosen, fits.any(axis=1)

    def scores(self, cuts: np.ndarray) -> np.ndarray:
        """Step time of each layout under its chosen recompute setting; infeasible layouts score above every
        feasible one, ordered by the memory they need."""
        cuts = np.asarray(cuts)
        out = np.empty(len(cuts))
        choices = _recompute_choices(self.req)
        for start in range(0, len(cuts), BATCH):
            part = cuts[start:start + BATCH]
            chosen, feasible = self.choose(part)
            vals = np.empty(len(part))
            for j in np.unique(chosen):
                rows = chosen == j
                vals[rows] = self.step_times(part[rows], choices[j])
            if not feasible.all():
                need = np.array([self.memory(part[k:k + 1], choices[chosen[k]]).max() for k in np.flatnonzero(~feasible)])
                vals[~feasible] = 1e30 * (1 + need / 2**40)
            out[start:start + BATCH] = vals
        return out


def _cuts_of(splits) -> np.ndarray:
    """[batch, chunks + 1] item cuts of a batch of splits (embedding first, loss last)."""
    s = np.atleast_2d(np.asarray(splits, int))
    inner = 1 + np.cumsum(s, axis=1)[:, :-1]
    total = s.sum(axis=1, keepdims=True) + 2
    return np.concatenate([np.zeros((len(s), 1), int), inner, total], axis=1)


def evaluate_cuts(req: PlanRequest, cuts: tuple[int, ...], recompute: list[str] | None = None,
                  costs: _Costs | None = None) -> Plan:
    """Simulate any layout given as item cuts. Without `recompute`, each rank gets the cheapest setting that
    fits its budget."""
    cuts = tuple(int(c) for c in cuts)
    if len(cuts) != req.chunks + 1 or cuts[0] != 0 or cuts[-1] != req.num_layers + 2 or \
            any(b < a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts {cuts} do not cut {req.num_layers + 2} items into {req.chunks} chunks")
    ev = costs or _Costs(req)
    arr = np.asarray([cuts])
    if recompute is None:
        chosen, feasible = ev.choose(arr)
        recompute = _recompute_choices(req)[int(chosen[0])]
    fwd, bwd, act = (x[0] for x in ev.chunk_costs(arr, recompute))
    sim = ev.simulate(fwd, bwd, act, cuts)
    memory = ev.rank_params(arr)[0] * req.bytes_per_param + np.asarray(sim.peak_activation_bytes)
    feasible = req.memory_budget is None or float(memory.max()) <= req.memory_budget
    return Plan(layouts.layers_per_chunk(cuts), list(recompute), sim, [float(x) for x in memory], feasible,
                layouts.layout_string(cuts), [float(x) for x in fwd], [float(x) for x in bwd], cuts)


def evaluate(req: PlanRequest, split: tuple[int, ...], recompute: list[str] | None = None,
             costs: _Costs | None = None) -> Plan:
    """Simulate a split (layers per chunk, embedding on the first chunk, loss on the last)."""
    if len(split) != req.chunks or sum(split) != req.num_layers or min(split) < 1:
        raise ValueError(f"split {split} does not cut {req.num_layers} layers into {req.chunks} chunks")
    return evaluate_cuts(req, layouts.split_cuts(tuple(split)), recompute, costs)


def _compositions(n: int, k: int):
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        yield tuple(b - a for a, b in zip(bounds, bounds[1:]))


def count_splits(n: int, k: int) -> int:
    return math.comb(n - 1, k - 1)


def _schedule_ops(req: PlanRequest) -> int:
    return 2 * req.chunks * req.m


def _best_of_all(req: PlanRequest, ev: _Costs) -> tuple[tuple[int, ...], float]:
    """The split with the lowest score among all of them (batched), and its score."""
    best, best_score = None, math.inf
    splits = _compositions(req.num_layers, req.chunks)
    while True:
        part = list(itertools.islice(splits, BATCH))
        if not part:
            return best, best_score
        scores = ev.scores(_cuts_of(part))
        j = int(np.argmin(scores))
        if scores[j] < best_score * (1 - 1e-12):
            best, best_score = part[j], float(scores[j])


def brute_force(req: PlanRequest) -> Plan:
    """Simulate every split; the fastest feasible one (or, when none fits, the one with the least memory)."""
    req.check_plannable()
    ev = _Costs(req)
    return evaluate(req, _best_of_all(req, ev)[0], costs=ev)


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


def _moves(split: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Splits one layer away: a layer moved from any chunk to any other (the chunks in between shift)."""
    out = []
    for src in range(len(split)):
        if split[src] < 2:
            continue
        for dst in range(len(split)):
            if dst != src:
                s = list(split)
                s[src] -= 1
                s[dst] += 1
                out.append(tuple(s))
    return out


def _boundary_pair_shifts(split: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Splits with two different chunk boundaries each moved by one layer (every chunk keeps at least one)."""
    shifts = [(b, d) for b in range(len(split) - 1) for d in (1, -1)]  # d = +1: chunk b takes one from b + 1
    out = []
    for (b1, d1), (b2, d2) in itertools.combinations(shifts, 2):
        if b1 == b2:
            continue
        s = list(split)
        for b, d in ((b1, d1), (b2, d2)):
            s[b] += d
            s[b + 1] -= d
        if min(s) >= 1:
            out.append(tuple(s))
    return out


def _climb(ev: _Costs, split: tuple[int, ...], score: float | None = None) -> tuple[tuple[int, ...], float]:
    """Best-improvement descent over single-layer moves, then boundary-pair shifts where no move helps."""
    if score is None:
        score = float(ev.scores(_cuts_of([split]))[0])
    while True:
        for neighbours in (_moves, _boundary_pair_shifts):
            cands = neighbours(split)
            if not cands:
                continue
            scores = ev.scores(_cuts_of(cands))
            j = int(np.argmin(scores))
            if scores[j] < score * (1 - 1e-12):
                split, score = cands[j], float(scores[j])
                break
        else:
            return split, score


def _kick(split: tuple[int, ...], rng: random.Random) -> tuple[int, ...]:
    """Move one to four single layers between random chunks (each chunk keeps at least one)."""
    out = list(split)
    for _ in range(rng.randint(1, 4)):
        src, dst = rng.sample(range(len(out)), 2)
        if out[src] > 1:
            out[src] -= 1
            out[dst] += 1
    return tuple(out)


def random_split(n: int, k: int, rng: random.Random) -> tuple[int, ...]:
    """A uniformly random split of n layers into k non-empty chunks."""
    cuts = sorted(rng.sample(range(1, n), k - 1))
    bounds = (0, *cuts, n)
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def plan(req: PlanRequest, exhaustive_work: float = EXHAUSTIVE_WORK) -> Plan:
    """The fastest feasible plan found (exhaustive when the split space is small). Raises PlanError naming the
    budget key, with the shortfall, when no split fits."""
    req.check_plannable()
    ev = _Costs(req)
    n, K = req.num_layers, req.chunks
    if count_splits(n, K) * _schedule_ops(req) <= exhaustive_work:
        split = _best_of_all(req, ev)[0]
    else:
        weights = [None] + ([_chain_weight(req)] if req.v == 1 else [])
        starts = [minimax_split(req, w) for w in weights] + [even_split(n, K), even_split(n, K, front=True)]
        if req.v <= 2:
            starts.append(window_bound_split(req)[1])  # the split the lower bound is attained on
        split, score = None, math.inf
        for start in dict.fromkeys(s for s in starts if s is not None):
            cand, cand_score = _climb(ev, start)
            if cand_score < score:
                split, score = cand, cand_score
        if req.v > 1:  # interleaved: many local optima; restart from kicks and from random splits
            rng = random.Random(0)
            for restart in range(RESTARTS):
                start = _kick(split, rng) if restart % 2 == 0 else random_split(n, K, rng)
                cand, cand_score = _climb(ev, start)
                if cand_score < score * (1 - 1e-12):
                    split, score = cand, cand_score
    best = evaluate(req, split, costs=ev)
    if not best.feasible:
        need = max(best.memory)
        raise PlanError("memory budget", f"no layout fits {req.memory_budget / 2**30:.2f} GiB per device: the "
                                         f"best needs {need / 2**30:.2f} GiB, short by "
                                         f"{(need - req.memory_budget) / 2**30:.2f} GiB")
    return best


def even_split(n: int, k: int, front: bool = False) -> tuple[int, ...]:
    """n layers over k chunks as evenly as possible (the remainder on the later chunks, or with `front` on the
    first ones)."""
    if front:
        return tuple(n // k + (1 if c < n % k else 0) for c in range(k))
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


def lower_bound(req: PlanRequest, enumerate_work: float = ENUMERATE_WORK) -> float:
    """A step time no split can beat (see the module docstring). Where simulating every split costs at most
    `enumerate_work` op evaluations, also the fastest of them all without recompute and without the memory
    budget: recompute only adds time and a budget only removes splits, so no plan beats it, and it is the
    tightest bound there is."""
    req.check_plannable()
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
    if count_splits(req.num_layers, req.chunks) * _schedule_ops(req) <= enumerate_work:
        relaxed = dataclasses.replace(req, memory_budget=None, allow_recompute=False)
        bounds.append(_best_of_all(relaxed, _Costs(relaxed))[1])
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
