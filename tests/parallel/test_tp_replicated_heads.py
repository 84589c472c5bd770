"""At TP=2 without SP the router and loop head stay bitwise equal on both TP ranks after several steps, even when
the DP reductions of their gradients (one per TP rank, on different communicators) differ by an ulp: the
token-sparse loop plan sizes the TP collectives from their decisions, so a drift could hang the run."""

from __future__ import annotations

from tests.parallel.overlap_runs import tp_heads_case


def test_replicated_heads_stay_bitwise_equal_across_tp_ranks(rank_pools):
    for drift in (False, True):
        for out in rank_pools(2).run(tp_heads_case, drift, timeout_s=180):
            assert out["heads"] > 0
            assert out["equal"], (drift, out["max_diff"])
