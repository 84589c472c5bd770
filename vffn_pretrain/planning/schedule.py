"""Event simulation of megatron-core's pipeline schedules (1F1B and interleaved 1F1B) for one training step.

Each rank runs its own list of operations in megatron's order, one at a time; an operation starts when the rank
is free and its input has arrived:

* F(c, i), forward of micro-batch i on chunk c, needs F(c-1, i) plus one P2P transfer (chunk c-1 lives on
  another rank whenever PP > 1);
* B(c, i) needs B(c+1, i) plus one P2P transfer, and F(c, i); the last chunk's backward follows its forward.

Chunks are numbered in model order, c = vp * p + r for rank r and virtual stage vp (megatron's layout order).
The per-rank orders are those of `forward_backward_pipelining_without_interleaving` (warm-up
min(p - r - 1, m) forwards, m - w one-forward-one-backward pairs, w cool-down backwards) and
`forward_backward_pipelining_with_interleaving` (`get_schedule_table` order in groups of g micro-batches,
warm-up 2 (p - r - 1) + (v - 1) g, capped at m v). Sends do not block the sender (the model of an overlapped,
buffered P2P); the optimizer step is not simulated.

Peak activation memory follows from the order alone: a rank holds chunk c's activations for micro-batch i from
the start of F(c, i) to the end of B(c, i), so its peak is the largest running sum of its forwards minus its
backwards, weighted by each chunk's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    kind: str  # "F" or "B"
    chunk: int  # model-order chunk index
    micro: int


def schedule_table(m: int, v: int, group: int) -> list[tuple[int, int]]:
    """(micro-batch, virtual stage) in the order a rank runs its forwards under interleaving: groups of `group`
    micro-batches, each group through every virtual stage before the next group starts."""
    table = []
    for start in range(0, m, group):
        stop = m if start + group >= m else start + group
        table.extend((i, vp) for vp in range(v) for i in range(start, stop))
    return table


def rank_order(rank: int, p: int, v: int, m: int, group: int | None = None) -> list[Op]:
    """The operations rank `rank` runs in one step, in megatron-core's order."""
    if v == 1:
        warm = min(p - rank - 1, m)
        fwd = [Op("F", rank, i) for i in range(m)]
        bwd = [Op("B", rank, i) for i in range(m)]
        order = fwd[:warm]
        for k in range(m - warm):
            order += [fwd[warm + k], bwd[k]]
        return order + bwd[m - warm:]
    g = p if group is None else group
    table = schedule_table(m, v, g)
    total = m * v
    warm = min((p - rank - 1) * 2 + (v - 1) * g, total)

    def forward(k: int) -> Op:
        i, vp = table[k]
        return Op("F", vp * p + rank, i)

    def backward(k: int) -> Op:
        i, vp = table[k]
        return Op("B", (v - 1 - vp) * p + rank, i)

    order = [forward(k) for k in range(warm)]
    for k in range(total - warm):
        order += [forward(warm + k), backward(k)]
    return order + [backward(k) for k in range(total - warm, total)]


@dataclass
class StepSimulation:
    """step_time: when the last rank finishes; busy[r], idle[r] = step_time - busy[r]; bubble: idle share of
    all rank-time; peak_activation_bytes[r]; start/end: per Op times (for tests and plots)."""

    step_time: float
    busy: list[float]
    idle: list[float]
    bubble: float
    peak_activation_bytes: list[float]
    start: dict
    end: dict
    peak_in_flight: list[int]


def simulate(forward: list[float], backward: list[float], p: int, m: int, p2p: float = 0.0,
             activation_bytes: list[float] | None = None, group: int | None = None) -> StepSimulation:
    """Simulate one step. forward[c], backward[c]: seconds of one micro-batch on chunk c (len = p * v);
    p2p: seconds per activation or gradient transfer between ranks; activation_bytes[c]: bytes chunk c keeps
    per in-flight micro-batch; group: megatron's microbatch_group_size_per_vp_stage (default p)."""
    chunks = len(forward)
    if chunks != len(backward) or chunks % p:
        raise ValueError(f"need p * v forward and backward times, got {len(forward)}, {len(backward)} for p={p}")
    if m < 1:
        raise ValueError(f"need at least one micro-batch, got {m}")
    v = chunks // p
    act = activation_bytes or [0.0] * chunks
    orders = [rank_order(r, p, v, m, group) for r in range(p)]
    hop = p2p if p > 1 else 0.0
    start: dict[Op, float] = {}
    end: dict[Op, float] = {}
    pos = [0] * p
    free = [0.0] * p
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r in range(p):
            while pos[r] < len(orders[r]):
                op = orders[r][pos[r]]
                deps = _deps(op, chunks)
                if any(d not in end for d in deps):
                    break
                ready = max([free[r]] + [end[d] + (hop if d.kind == op.kind or d.chunk != op.chunk else 0.0)
                                         for d in deps])
                duration = forward[op.chunk] if op.kind == "F" else backward[op.chunk]
                start[op], end[op] = ready, ready + duration
                free[r] = end[op]
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("schedule deadlock: the per-rank orders are inconsistent")
    step_time = max(free)
    busy = [sum((forward if op.kind == "F" else backward)[op.chunk] for op in orders[r]) for r in range(p)]
    idle = [step_time - b for b in busy]
    peaks, counts = [], []
    for r in range(p):
        held = peak = 0.0
        n = n_peak = 0
        for op in orders[r]:
            sign = 1 if op.kind == "F" else -1
            held += sign * act[op.chunk]
            n += sign
            peak, n_peak = max(peak, held), max(n_peak, n)
        peaks.append(peak)
        counts.append(n_peak)
    bubble = sum(idle) / (p * step_time) if step_time > 0 else 0.0
    return StepSimulation(step_time, busy, idle, bubble, peaks, start, end, counts)


def _deps(op: Op, chunks: int) -> list[Op]:
    if op.kind == "F":
        return [Op("F", op.chunk - 1, op.micro)] if op.chunk > 0 else []
    if op.chunk == chunks - 1:
        return [Op("F", op.chunk, op.micro)]
    return [Op("B", op.chunk + 1, op.micro), Op("F", op.chunk, op.micro)]
