"""The window lower bound (planning/bounds.py) against an independent enumeration, and below every plan."""

from __future__ import annotations

import math
import random

import pytest

from vffn_pretrain.planning import planner
from vffn_pretrain.planning.bounds import window_bound_split
from vffn_pretrain.planning.costs import ItemCost
from vffn_pretrain.planning.schedule import rank_order
from vffn_pretrain.planning.timing import Timing

TIMING = Timing({"default": 1.0}, {"default": 1.0}, optimizer_seconds_per_param=0.3, p2p_latency_s=0.05)


def _items(rng: random.Random, n: int) -> list[ItemCost]:
    layers = [ItemCost("t", "versatile", f, 2 * f * rng.uniform(0.5, 1.0), a, a / 10, rng.uniform(0.5, 2.0))
              for f, a in ((rng.uniform(1, 5), rng.uniform(1, 10)) for _ in range(n))]
    return [ItemCost("E", "embedding", 0.2, 0.0, 0.0, 0.0, 2.0), *layers, ItemCost("L", "head", 2.0, 4.0, 3.0, 1.0, 2.0)]


def _reference(req) -> float:
    """Every split (written from the definition, without the DP)."""
    return min(_split_value(req, split) for split in planner._compositions(req.num_layers, req.chunks))


def _split_value(req, split) -> float:
    """Every rank; every pair of operations k1 <= k2 in its order; each rank's best fitting recompute setting;
    memory by replaying the order."""
    t = req.timing
    hop = t.p2p_s(req.items[1].input_bytes) if req.p > 1 else 0.0
    K = req.chunks
    groups = planner._chunk_items(req, split)
    f = [sum(t.forward_s(i) for i in g) for g in groups]
    b = [sum(t.backward_s(i) for i in g) for g in groups]
    worst = 0.0
    for r in range(req.p):
        order = rank_order(r, req.p, req.v, req.m, req.group)
        mine = [c for c in range(K) if c % req.p == r]
        fitting = []
        for rc in (["none", "full"] if req.memory_budget is not None else ["none"]):
            own = {c: [i.with_recompute(rc) for i in groups[c]] for c in mine}
            held, peak = dict.fromkeys(mine, 0), 0.0
            for op in order:
                held[op.chunk] += 1 if op.kind == "F" else -1
                peak = max(peak, sum(held[c] * sum(i.stored_bytes for i in own[c]) for c in mine))
            params = sum(i.params for c in mine for i in groups[c])
            if req.memory_budget is not None and params * req.bytes_per_param + peak > req.memory_budget:
                continue
            dur = {(k, c): sum((t.forward_s if k == "F" else t.backward_s)(i) for i in own[c])
                   for k in "FB" for c in mine}
            est = {("F", c): sum(f[:c]) + c * hop for c in mine}
            est |= {("B", c): sum(f) + (K - 1) * hop + sum(b[c + 1:]) + (K - 1 - c) * hop for c in mine}
            tail = {("F", c): sum(f[c + 1:]) + (K - 1 - c) * hop + sum(b) + (K - 1) * hop for c in mine}
            tail |= {("B", c): sum(b[:c]) + c * hop for c in mine}
            value = 0.0
            for k1 in range(len(order)):
                run = est[order[k1].kind, order[k1].chunk]
                for k2 in range(k1, len(order)):
                    run += dur[order[k2].kind, order[k2].chunk]
                    value = max(value, run + tail[order[k2].kind, order[k2].chunk])
            fitting.append(value + t.optimizer_s(params))
        worst = max(worst, min(fitting, default=math.inf))
    return worst


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p,v,n,budget", [(2, 1, 6, None), (3, 1, 7, 120.0), (2, 2, 7, None), (2, 2, 7, 170.0),
                                          (3, 2, 8, 125.0), (2, 2, 7, 60.0)])
def test_window_bound_is_the_exact_minimum_over_splits(seed, p, v, n, budget):
    req = planner.PlanRequest(_items(random.Random(seed * 13 + p + v), n), p, v, 6, TIMING, budget)
    value, split = window_bound_split(req)
    if budget == 60.0:  # below what any split needs, even with full recompute everywhere
        assert value == math.inf and split is None and _reference(req) == math.inf
        return
    assert value == pytest.approx(_reference(req), rel=1e-9) and value < math.inf
    assert _split_value(req, split) == pytest.approx(value, rel=1e-9)  # the split it returns attains it


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p,v,squeeze", [(2, 1, False), (3, 1, True), (2, 2, False), (2, 2, True), (3, 2, True)])
def test_lower_bound_is_below_every_plan_and_close_to_the_best(seed, p, v, squeeze):
    """squeeze: a budget halfway between the least memory any split needs (full recompute everywhere) and what
    the unconstrained best plan uses, so the best plan has to change."""
    req = planner.PlanRequest(_items(random.Random(seed * 5 + p), 8), p, v, 6, TIMING)
    if squeeze:
        free = planner.brute_force(req)
        least = min(max(planner.evaluate(req, s, ["full"] * p).memory)
                    for s in planner._compositions(req.num_layers, req.chunks))
        req = planner.PlanRequest(req.items, p, v, 6, TIMING, (least + max(free.memory)) / 2)
    best = planner.brute_force(req)
    assert best.feasible
    assert not squeeze or best.step_time > free.step_time
    bound = planner.lower_bound(req, enumerate_work=0)  # the analytic bounds alone
    assert bound <= best.step_time * (1 + 1e-9)
    assert bound >= 0.75 * best.step_time  # a bound that ignored the schedule would fall far lower
    # Few enough splits to simulate them all: the bound is the best plan itself unless memory binds.
    exact = planner.lower_bound(req)
    assert bound <= exact <= best.step_time * (1 + 1e-9)
    assert squeeze or exact == pytest.approx(best.step_time, rel=1e-12)


def test_uniform_interleaved_bound_is_the_schedules_own_time():
    """Equal layers, free embedding/head and P2P: the even split's simulated interleaved 1F1B step (m v + p - 1
    chunk slots of F + B per rank, megatron's bubble) is what the bound gives."""
    layer = ItemCost("t", "dense", 1.0, 2.0, 1.0, 0.1, 1.0)
    items = [ItemCost("E", "embedding", 0.0, 0.0, 0.0, 0.0, 0.0), *[layer] * 8,
             ItemCost("L", "head", 0.0, 0.0, 0.0, 0.0, 0.0)]
    req = planner.PlanRequest(items, 4, 2, 8, Timing({"default": 1.0}, {"default": 1.0}))
    even = planner.evaluate(req, (1,) * 8)
    assert even.step_time == pytest.approx(planner.brute_force(req).step_time)
    assert planner.lower_bound(req) == pytest.approx(even.step_time)
