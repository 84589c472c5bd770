"""The schedule simulator against schedules worked out by hand from megatron-core's definitions."""

from __future__ import annotations

import pytest

from vffn_pretrain.planning.schedule import Op, rank_order, sharing_slowdown, simulate


@pytest.mark.parametrize("p,m", [(2, 3), (3, 3), (4, 8), (4, 2), (3, 7)])
def test_uniform_1f1b_takes_m_plus_p_minus_1_slots(p, m):
    # Uniform stages: the step is (m + p - 1)(f + b); each rank idles (p - 1)(f + b).
    sim = simulate([1.0] * p, [2.0] * p, p, m)
    assert sim.step_time == pytest.approx((m + p - 1) * 3.0)
    assert sim.idle == pytest.approx([(p - 1) * 3.0] * p)
    assert sim.bubble == pytest.approx((p - 1) / (m + p - 1))
    assert sim.peak_in_flight == [min(p - r, m) for r in range(p)]


def test_two_stage_three_microbatches_op_by_op():
    # Worked by hand: f = 1, b = 2 on both ranks. rank 0: F0 F1 B0 F2 B1 B2; rank 1: F0 B0 F1 B1 F2 B2.
    sim = simulate([1.0, 1.0], [2.0, 2.0], 2, 3)
    expect_end = {Op("F", 0, 0): 1, Op("F", 0, 1): 2, Op("F", 1, 0): 2, Op("B", 1, 0): 4, Op("B", 0, 0): 6,
                  Op("F", 1, 1): 5, Op("B", 1, 1): 7, Op("F", 0, 2): 7, Op("B", 0, 1): 9, Op("F", 1, 2): 8,
                  Op("B", 1, 2): 10, Op("B", 0, 2): 12}
    assert {op: sim.end[op] for op in expect_end} == expect_end
    assert rank_order(0, 2, 1, 3) == [Op("F", 0, 0), Op("F", 0, 1), Op("B", 0, 0), Op("F", 0, 2), Op("B", 0, 1),
                                      Op("B", 0, 2)]


def test_unequal_stages_with_p2p_and_memory():
    # rank 0: f=1, b=1; rank 1: f=2, b=4; each transfer 0.5 s; m = 2 (worked by hand):
    # r0 F0 [0,1] F1 [1,2]; r1 F0 [1.5,3.5] B0 [3.5,7.5] F1 [7.5,9.5] B1 [9.5,13.5]; r0 B0 [8,9] B1 [14,15].
    sim = simulate([1.0, 2.0], [1.0, 4.0], 2, 2, p2p=0.5, activation_bytes=[10.0, 100.0])
    assert sim.step_time == pytest.approx(15.0)
    assert sim.end[Op("B", 0, 0)] == pytest.approx(9.0)
    assert sim.busy == pytest.approx([4.0, 12.0])
    assert sim.idle == pytest.approx([11.0, 3.0])
    assert sim.peak_activation_bytes == pytest.approx([20.0, 100.0])


def test_interleaved_two_ranks_two_chunks_by_hand():
    # p = 2, v = 2, m = 2, every chunk f = 1, b = 2 (group size 2). rank 0 warms up with all four forwards
    # (2 (p-1) + (v-1) g = 4); rank 1 runs F c1 m0, F c1 m1, then F/B pairs on chunk 3, then B on chunk 1.
    # By hand the last op, B(c0, m1) on rank 0, ends at 15 = (m + (p - 1)/v) W / p with W = 12.
    assert rank_order(1, 2, 2, 2) == [Op("F", 1, 0), Op("F", 1, 1), Op("F", 3, 0), Op("B", 3, 0), Op("F", 3, 1),
                                      Op("B", 3, 1), Op("B", 1, 0), Op("B", 1, 1)]
    sim = simulate([1.0] * 4, [2.0] * 4, 2, 2)
    assert sim.end[Op("B", 3, 0)] == 6 and sim.end[Op("B", 2, 1)] == 11 and sim.end[Op("B", 1, 1)] == 13
    assert sim.step_time == pytest.approx(15.0)
    assert sim.peak_in_flight == [4, 3]  # rank 1: two warm-up forwards + the first steady one


@pytest.mark.parametrize("p,v,m", [(2, 2, 4), (4, 2, 8), (2, 3, 6), (4, 3, 4)])
def test_balanced_interleaved_bubble(p, v, m):
    # Balanced chunks of work W / (p v): step = (m + (p - 1) / v) W / p (every rank starts its last backward
    # group as soon as the one before it allows). W = 3 per micro-batch here.
    sim = simulate([1.0 / v] * (p * v), [2.0 / v] * (p * v), p, m)
    assert sim.step_time == pytest.approx((m + (p - 1) / v) * 3.0 / p * p)
    # rank 0 holds 2 (p - 1) + (v - 1) p + 1 micro-batch chunks at its peak (megatron's warm-up + 1).
    assert sim.peak_in_flight[0] == min(2 * (p - 1) + (v - 1) * p + 1, m * v)


def test_shared_core_two_ranks_one_core_by_hand():
    """p=2, m=2, unit ops, one core shared. Rank 0 runs F0 F1 B0 B1, rank 1 F0 B0 F1 B1. By hand:
    F(0,0) alone [0,1]; F(0,1) and F(1,0) together at half speed [1,3]; B(1,0) alone [3,4] (B(0,0) waits
    for it); B(0,0) and F(1,1) together [4,6]; B(1,1) [6,7]; B(0,1) [7,8]. With one core the step is the total
    work, 8."""
    sim = simulate([1.0, 1.0], [1.0, 1.0], p=2, m=2, cores=1)
    assert sim.end[Op("F", 0, 1)] == pytest.approx(3.0) and sim.end[Op("F", 1, 0)] == pytest.approx(3.0)
    assert sim.end[Op("B", 1, 0)] == pytest.approx(4.0)
    assert sim.start[Op("F", 1, 1)] == pytest.approx(4.0) and sim.end[Op("B", 0, 0)] == pytest.approx(6.0)
    assert sim.step_time == pytest.approx(8.0)
    dedicated = simulate([1.0, 1.0], [1.0, 1.0], p=2, m=2)
    assert dedicated.step_time == pytest.approx(6.0)
    assert simulate([1.0, 1.0], [1.0, 1.0], p=2, m=2, cores=2).step_time == pytest.approx(6.0)


def test_measured_sharing_slowdown_by_hand():
    """The same schedule as above on two cores whose measured slowdown is 1.5 for two ranks at once (not the
    lossless 1.0). By hand: F(0,0) alone [0,1]; F(0,1) and F(1,0) together, each at 1 / 1.5 speed [1,2.5];
    B(1,0) alone [2.5,3.5]; B(0,0) and F(1,1) together [3.5,5]; B(1,1) [5,6]; B(0,1) [6,7]."""
    table = {1: 1.0, 2: 1.5}
    sim = simulate([1.0, 1.0], [1.0, 1.0], p=2, m=2, cores=2, shared_slowdown=table)
    assert sim.end[Op("F", 0, 1)] == pytest.approx(2.5) and sim.end[Op("F", 1, 0)] == pytest.approx(2.5)
    assert sim.end[Op("B", 1, 0)] == pytest.approx(3.5)
    assert sim.end[Op("B", 0, 0)] == pytest.approx(5.0) and sim.end[Op("F", 1, 1)] == pytest.approx(5.0)
    assert sim.step_time == pytest.approx(7.0)
    # Busy time stays the work itself: the slowdown is the machine's, not the rank's.
    assert sim.busy == pytest.approx([4.0, 4.0])


def test_sharing_slowdown_table():
    table = {1: 1.0, 2: 1.1, 3: 1.8, 4: 2.4}
    assert sharing_slowdown(3, 2, table) == pytest.approx(1.8)
    assert sharing_slowdown(8, 2, table) == pytest.approx(2.4 * 8 / 4)  # beyond the table: sharing what 4 had
    assert sharing_slowdown(2, 2, {1: 1.0, 4: 2.4}) == pytest.approx(1.0)  # a gap: lossless sharing
    assert sharing_slowdown(2, 2, {2: 0.97}) == 1.0  # noise below 1 never speeds a rank up
    assert [sharing_slowdown(k, 2) for k in (1, 2, 3, 4)] == pytest.approx([1.0, 1.0, 1.5, 2.0])


@pytest.mark.parametrize("p,m,cores", [(4, 8, 2), (4, 3, 1), (3, 5, 2)])
def test_shared_cores_bounds(p, m, cores):
    """Sharing never beats a device per rank, never beats total work / cores, and one core is exactly serial."""
    fwd = [1.0 + 0.3 * c for c in range(p)]
    bwd = [2.0 - 0.2 * c for c in range(p)]
    shared = simulate(fwd, bwd, p, m, cores=cores)
    alone = simulate(fwd, bwd, p, m)
    total = m * (sum(fwd) + sum(bwd))
    assert shared.step_time >= alone.step_time - 1e-9
    assert shared.step_time >= total / cores - 1e-9
    if cores == 1:
        assert shared.step_time == pytest.approx(total)


def test_optimizer_follows_the_flush():
    """The step ends when the slowest rank's optimizer does, after the last backward anywhere."""
    sim = simulate([1.0, 1.0], [1.0, 1.0], p=2, m=2, optimizer=[0.5, 1.5])
    assert sim.pipeline_time == pytest.approx(6.0)
    assert sim.step_time == pytest.approx(7.5)
    assert sim.busy == [pytest.approx(4.5), pytest.approx(5.5)]


def _interpret(programs: list[list[tuple]], forward: list[float], backward: list[float], hop: float,
               wait_for_sends: bool = True) -> dict[Op, float]:
    """An independent reading of the rank programs: each rank executes its instructions one by one on its own
    clock; a receive waits until its message was sent plus a hop; a waited send until the peer has posted the
    matching receive plus a hop (the rendezvous gloo and NCCL make). Returns every op's end time."""
    p = len(programs)
    pc, clock, end = [0] * p, [0.0] * p, {}
    sent, posted = {}, {}  # (src, dst) -> times of the sends / of dst's receives from src, in order
    own_sends: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    handles = {}
    progressed = True
    while progressed:
        progressed = False
        for r in range(p):
            while pc[r] < len(programs[r]):
                ins = programs[r][pc[r]]
                if ins[0] == "run":
                    clock[r] += forward[ins[1].chunk] if ins[1].kind == "F" else backward[ins[1].chunk]
                    end[ins[1]] = clock[r]
                elif ins[0] == "send":
                    times = sent.setdefault((r, ins[1]), [])
                    own_sends[r].append((ins[1], len(times)))
                    times.append(clock[r])
                elif ins[0] == "post":
                    times = posted.setdefault((ins[1], r), [])
                    handles[(r, ins[2])] = (ins[1], len(times))
                    times.append(clock[r])
                elif ins[0] == "wait":
                    src, i = handles[(r, ins[1])]
                    if len(sent.get((src, r), [])) <= i:
                        break  # not sent yet: let the other ranks go on
                    clock[r] = max(clock[r], sent[(src, r)][i] + hop)
                elif ins[0] == "wait_send" and wait_for_sends:
                    dst, i = own_sends[r][ins[1] - 1]
                    if len(posted.get((r, dst), [])) <= i:
                        break
                    clock[r] = max(clock[r], posted[(r, dst)][i] + hop)
                pc[r] += 1
                progressed = True
    assert all(pc[r] == len(programs[r]) for r in range(p)), "the programs deadlock"
    return end


@pytest.mark.parametrize("p,v,m,overlap", [(2, 1, 5, False), (4, 1, 8, False), (2, 2, 4, False), (2, 2, 4, True),
                                           (4, 2, 8, False), (4, 2, 8, True), (3, 3, 6, False), (4, 3, 8, True)])
def test_simulator_agrees_with_executing_the_rank_programs(p, v, m, overlap):
    """The compiled dependency graph gives every op the end time that running the programs gives, on uneven
    random chunks where ranks wait for each other's sends."""
    import random

    from vffn_pretrain.planning.schedule import rank_program

    rng = random.Random(p * 100 + v * 10 + m + overlap)
    programs = [rank_program(r, p, v, m, None, overlap) for r in range(p)]
    for _ in range(5):
        forward = [rng.uniform(0.2, 3.0) for _ in range(p * v)]
        backward = [2 * f * rng.uniform(0.5, 1.5) for f in forward]
        sim = simulate(forward, backward, p, m, overlap_p2p_comm=overlap)
        reference = _interpret(programs, forward, backward, 0.0)
        assert {op: pytest.approx(t) for op, t in reference.items()} == sim.end
        # With a hop, a receive notice that itself waited for a message costs the simulator one hop, not two.
        hop = 0.05
        sim = simulate(forward, backward, p, m, p2p=hop, overlap_p2p_comm=overlap)
        reference = _interpret(programs, forward, backward, hop)
        assert all(-1e-9 <= reference[op] - sim.end[op] <= 2 * hop + 1e-9 for op in reference)


@pytest.mark.parametrize("p,v,m,overlap", [(2, 1, 4, False), (4, 1, 8, False), (4, 2, 8, False), (4, 2, 8, True),
                                           (3, 3, 6, True)])
def test_where_megatron_waits_for_its_sends(p, v, m, overlap):
    """A blocking call waits for its sends before the rank computes again; a steady-state overlap_p2p_comm call
    leaves its send to the next call in its direction, so it is waited before the op after that call's op."""
    from vffn_pretrain.planning.schedule import rank_program

    for r in range(p):
        prog = rank_program(r, p, v, m, None, overlap)
        runs = [i for i, ins in enumerate(prog) if ins[0] == "run"]
        # The steady state's ops: from the forward before the first backward to the backward after the last
        # forward. Only their sends (with overlap_p2p_comm) may be waited after the next op; the warm-up and
        # cool-down calls block.
        first_b = runs.index(next(i for i in runs if prog[i][1].kind == "B"))
        last_f = runs.index(max(i for i in runs if prog[i][1].kind == "F"))
        steady = set(runs[max(first_b - 1, 0):last_f + 2]) if first_b > 0 else set()
        runs_since: dict[int, int] = {}
        deferred: set[int] = set()
        sends, last_run = 0, None
        for i, ins in enumerate(prog):
            if ins[0] == "send":
                sends += 1
                runs_since[sends] = 0
                if overlap and last_run in steady:
                    deferred.add(sends)
            elif ins[0] == "run":
                last_run = i
                for n in runs_since:
                    runs_since[n] += 1
                    assert n in deferred or runs_since[n] == 0, (r, n, "a blocking call's send waited after an op")
            elif ins[0] == "wait_send":
                assert runs_since.pop(ins[1]) <= (2 if overlap else 0), (r, ins[1])
        # Left unwaited: sends after the rank's last op, and with overlap the steady state's last send in each
        # direction (the blocking cool-down calls do not wait for it; megatron waits after the step's last op).
        assert len([n for n in runs_since.values() if n > 0]) <= (2 if overlap else 0)


def test_a_rank_waits_for_a_busy_peer_to_post_the_receive_of_its_send():
    """Interleaved without overlap_p2p_comm, with one slow chunk: a rank's blocking call returns only once its
    peer has posted the matching receive, so the step is longer than if sends were buffered."""
    from vffn_pretrain.planning.schedule import rank_program

    p, v, m = 4, 2, 4
    forward = [1.0, 1.0, 1.0, 1.0, 4.0, 1.0, 1.0, 1.0]  # chunk 4 (rank 0's second) is slow
    backward = [2 * f for f in forward]
    programs = [rank_program(r, p, v, m) for r in range(p)]
    waiting = max(_interpret(programs, forward, backward, 0.0).values())
    buffered = max(_interpret(programs, forward, backward, 0.0, wait_for_sends=False).values())
    assert (waiting, buffered) == (64.0, 63.0)
    assert simulate(forward, backward, p, m).step_time == pytest.approx(64.0)
