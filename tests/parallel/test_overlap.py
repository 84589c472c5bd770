"""megatron's overlap options train VersatileFFN correctly at DP=2 (gloo): with parallel.overlap_grad_reduce and
parallel.overlap_param_gather (distributed optimizer, one parameter per bucket) the losses equal those of the
same run without them, including a step on which every token of one rank's last micro-batch samples L_max with
the balance loss off (the router gets no gradient from the data there). A hang fails the test at the pool's
timeout instead of hanging the suite."""

from __future__ import annotations

from tests.parallel.overlap_runs import overlap_case


def test_overlapped_dp_matches_plain_dp_with_a_router_left_out_by_the_data(rank_pools):
    pool = rank_pools(2)
    plain = pool.run(overlap_case, False, timeout_s=180)
    overlapped = pool.run(overlap_case, True, timeout_s=180)
    assert plain[0] == plain[1] and overlapped[0] == overlapped[1]  # every rank reports the global loss
    for a, b in zip(plain[0], overlapped[0]):
        assert abs(a - b) <= 1e-6 * abs(a), (plain[0], overlapped[0])
