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
buffered P2P). The optimizer step follows the pipeline flush: megatron's gradient-norm all-reduce makes every rank
wait for the last one, then each rank steps its own parameters, so the step ends `max(optimizer)` after the
pipeline does.

`cores` models ranks that share a host's CPU cores (gloo tests and benchmarks on one machine): while k ranks
compute at once, each progresses at 1 / slowdown(k) of its own speed; a rank waiting for its input uses none.
Without a measured table slowdown(k) = max(1, k / cores), lossless processor sharing; `vffn-plan calibrate
--shared-ranks N` measures what the machine really loses (context switches, caches, memory bandwidth: on the
2-core development machine four ranks run 2.2-2.5x slower each, not 2x). Without `cores` every rank has its own
device.

Peak activation memory follows from the order alone: a rank holds chunk c's activations for micro-batch i from
the start of F(c, i) to the end of B(c, i), so its peak is the largest running sum of its forwards minus its
backwards, weighted by each chunk's bytes.
"""

from __future__ import annotations

import math
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
    pipeline_time: float = 0.0  # when the last rank finishes its last backward (step_time less the optimizer)


def simulate(forward: list[float], backward: list[float], p: int, m: int, p2p: float = 0.0,
             activation_bytes: list[float] | None = None, group: int | None = None,
             optimizer: list[float] | None = None, cores: int | None = None,
             shared_slowdown: dict[int, float] | None = None) -> StepSimulation:
    """Simulate one step. forward[c], backward[c]: seconds of one micro-batch on chunk c (len = p * v);
    p2p: seconds per activation or gradient transfer between ranks; activation_bytes[c]: bytes chunk c keeps
    per in-flight micro-batch; group: megatron's microbatch_group_size_per_vp_stage (default p);
    optimizer[r]: seconds of rank r's optimizer step; cores: CPU cores the ranks share (None: one device each);
    shared_slowdown: measured slowdown per number of ranks computing at once (see `sharing_slowdown`)."""
    chunks = len(forward)
    if chunks != len(backward) or chunks % p:
        raise ValueError(f"need p * v forward and backward times, got {len(forward)}, {len(backward)} for p={p}")
    if m < 1:
        raise ValueError(f"need at least one micro-batch, got {m}")
    if cores is not None and cores < 1:
        raise ValueError(f"cores must be positive, got {cores}")
    v = chunks // p
    act = activation_bytes or [0.0] * chunks
    orders = [rank_order(r, p, v, m, group) for r in range(p)]
    hop = p2p if p > 1 else 0.0

    def duration(op: Op) -> float:
        return forward[op.chunk] if op.kind == "F" else backward[op.chunk]

    def ready_time(op: Op, free: float, end: dict) -> float | None:
        """When op can start on a rank free at `free`: None while an input is still being computed."""
        deps = _deps(op, chunks)
        if any(d not in end for d in deps):
            return None
        return max([free] + [end[d] + (hop if d.kind == op.kind or d.chunk != op.chunk else 0.0) for d in deps])

    if cores is None or (cores >= p and not shared_slowdown):
        start, end = _run_dedicated(orders, duration, ready_time)
    else:
        start, end = _run_shared(orders, duration, ready_time, lambda k: sharing_slowdown(k, cores, shared_slowdown))
    pipeline_time = max(end[o[-1]] for o in orders)
    step_time = pipeline_time + max(optimizer or [0.0])
    busy = [sum(duration(op) for op in orders[r]) + (optimizer[r] if optimizer else 0.0) for r in range(p)]
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
    return StepSimulation(step_time, busy, idle, bubble, peaks, start, end, counts, pipeline_time)


def _run_dedicated(orders, duration, ready_time) -> tuple[dict, dict]:
    """Start and end of every op when each rank has its own device: an op runs as soon as its rank is free
    and its inputs have arrived."""
    start: dict[Op, float] = {}
    end: dict[Op, float] = {}
    pos = [0] * len(orders)
    free = [0.0] * len(orders)
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r, order in enumerate(orders):
            while pos[r] < len(order):
                op = order[pos[r]]
                ready = ready_time(op, free[r], end)
                if ready is None:
                    break
                start[op], end[op] = ready, ready + duration(op)
                free[r] = end[op]
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("schedule deadlock: the per-rank orders are inconsistent")
    return start, end


def sharing_slowdown(k: int, cores: int, measured: dict[int, float] | None = None) -> float:
    """How many times slower each of k ranks computing at once runs when the ranks share `cores` CPU cores.

    measured: {k: slowdown} from `vffn-plan calibrate --shared-ranks`; where it lacks k, its largest entry
    K is scaled by k / K (beyond K the extra ranks only share what K had). Without it, lossless processor
    sharing: max(1, k / cores). Never below 1: sharing only ever slows a rank down (the lower bound relies on it)."""
    if measured and k in measured:
        return max(1.0, measured[k])
    if measured and k > max(measured):
        top = max(measured)
        return max(1.0, measured[top] * k / top)
    return max(1.0, k / cores)


def _run_shared(orders, duration, ready_time, slowdown) -> tuple[dict, dict]:
    """Start and end of every op when the ranks share a host's cores: an event loop over op starts and ends in
    which the k running ops each advance at 1 / slowdown(k) seconds of work per second."""
    start: dict[Op, float] = {}
    end: dict[Op, float] = {}
    pos = [0] * len(orders)
    free = [0.0] * len(orders)
    left: dict[int, float] = {}  # rank -> seconds of work left on its running op
    now = 0.0
    while any(pos[r] < len(o) for r, o in enumerate(orders)):
        next_ready = math.inf
        for r, order in enumerate(orders):
            if r in left or pos[r] == len(order):
                continue
            ready = ready_time(order[pos[r]], free[r], end)
            if ready is None:
                continue
            if ready <= now + 1e-15:
                start[order[pos[r]]] = now
                left[r] = duration(order[pos[r]])
            else:
                next_ready = min(next_ready, ready)
        if not left and next_ready == math.inf:
            raise RuntimeError("schedule deadlock: the per-rank orders are inconsistent")
        rate = 1.0 / slowdown(len(left)) if left else 1.0
        next_end = now + min(left.values()) / rate if left else math.inf
        step_to = min(next_end, next_ready)
        for r in list(left):
            left[r] -= (step_to - now) * rate
            if left[r] <= 1e-12:
                op = orders[r][pos[r]]
                end[op] = step_to
                free[r] = step_to
                pos[r] += 1
                del left[r]
        now = step_to
    return start, end


def _deps(op: Op, chunks: int) -> list[Op]:
    if op.kind == "F":
        return [Op("F", op.chunk - 1, op.micro)] if op.chunk > 0 else []
    if op.chunk == chunks - 1:
        return [Op("F", op.chunk, op.micro)]
    return [Op("B", op.chunk + 1, op.micro), Op("F", op.chunk, op.micro)]
