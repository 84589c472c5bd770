"""Event simulation of one training step under megatron-core's pipeline schedules, as megatron-core 0.16.1 runs
them (`megatron/core/pipeline_parallel/schedules.py`).

Each rank runs a fixed program: its forwards and backwards in megatron's order (`rank_order`), and between them
the point-to-point calls megatron makes. `rank_program` writes that program down call by call for the three code
paths the project can run:

* 1F1B without interleaving (`forward_backward_pipelining_without_interleaving`): w = min(p - r - 1, m) warm-up
  forwards, m - w forward/backward pairs, w cool-down backwards. Each forward's output is sent right after it in
  a blocking call (batched P2P), which also waits for that send to complete.
* interleaved 1F1B with `overlap_p2p_comm` (`forward_backward_pipelining_with_interleaving`, the `pre_forward` /
  `post_forward` hooks of its steady state): outputs leave right after their op, in `get_schedule_table`'s order
  of (micro-batch, virtual stage) pairs, warm-up min(2 (p - r - 1) + (v - 1) g, m v) forwards. The warm-up and
  cool-down calls block as in 1F1B; a steady-state call returns at once, and its send is waited for after the
  next call in the same direction is issued.
* interleaved 1F1B without it (its "No p2p overlap" branch): a steady-state iteration runs one forward and one
  backward back to back and only then calls `send_forward_backward_recv_forward_backward`, which sends the
  forward's output and the backward's gradient and blocks until both the next forward's input and the next
  backward's gradient have arrived. So a forward's output leaves only after that iteration's backward, and an
  iteration cannot start before the inputs of both of its ops are in. (The warm-up's last exchange already waits
  for the first backward's gradient.)

Messages travel in one `p2p` hop from the moment they are sent. A send completes when it is sent or, if later,
one hop after its peer has posted the matching receive (gloo and NCCL both match a send with its receive before
moving the data; the peer posts it once its op before has ended and what it waited for since has arrived), and
megatron waits for its sends: a blocking call returns only once its sends have completed too (a steady-state
`overlap_p2p_comm` call: see above). A chain of such notices (a peer that posted only after its own send
completed) costs one hop in the graph, not one per link: at most a hop or two early. So a
rank that sends to a peer still busy with a long chunk waits for it, which matters for unbalanced splits (an
even split keeps the ranks in step and hides it). Messages between two ranks are matched in
the order they were posted, as torch.distributed matches them; `CompiledSchedule` checks that every op has
received its own input by the time it runs, so a program that mismatched messages would be refused, not timed.

The result is a fixed dependency graph: an op starts when its rank has finished the op before it, every message
the rank waited for in between has arrived (each leaving when the op before its send ends) and every send it
waited for has completed.
`CompiledSchedule.pipeline_times` evaluates it for many splits at once (numpy, level by level), which is what the
planner's search uses; `simulate` gives one split's full timeline. The optimizer step follows the pipeline flush:
megatron's gradient-norm all-reduce makes every rank wait for the last one, then each rank steps its own
parameters, so the step ends `max(optimizer)` after the pipeline does.

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
from collections import deque
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np


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


# A rank's program: ("run", op) computes op; ("send", peer, op) sends op's result (a forward's output, a
# backward's input gradient) to `peer`; ("post", peer, handle) posts a receive from `peer`; ("wait", handle)
# blocks until that receive has arrived; ("wait_send", n) blocks until the rank's n-th send has completed. A
# blocking megatron call is its sends and posts followed by the waits for both.


def rank_program(rank: int, p: int, v: int, m: int, group: int | None = None,
                 overlap_p2p_comm: bool = False) -> list[tuple]:
    """What rank `rank` does in one step, call by call, on the code path megatron takes for (p, v,
    overlap_p2p_comm). overlap_p2p_comm needs v > 1 (megatron refuses it without interleaving)."""
    if v == 1:
        if overlap_p2p_comm:
            raise ValueError("megatron supports overlap_p2p_comm only with interleaving (VPP > 1)")
        return _program_1f1b(rank, p, m)
    return _program_interleaved(rank, p, v, m, p if group is None else group, overlap_p2p_comm)


class _Writer:
    """Appends instructions; `exchange` is one blocking megatron P2P call, which waits for its receives and for
    its sends to complete. ("wait_send", n) waits for the rank's n-th send (counted from 1)."""

    def __init__(self):
        self.out: list[tuple] = []
        self.handles = 0
        self.sends = 0
        self.unwaited: dict[str, int | None] = {"F": None, "B": None}

    def run(self, op: Op) -> None:
        self.out.append(("run", op))

    def post(self, peer: int) -> int:
        self.handles += 1
        self.out.append(("post", peer, self.handles))
        return self.handles

    def send(self, peer: int, op: Op) -> int:
        self.sends += 1
        self.out.append(("send", peer, op))
        return self.sends

    def exchange(self, sends=(), receives=()) -> None:
        sent = [self.send(peer, op) for peer, op in sends]
        for h in [self.post(peer) for peer in receives]:
            self.out.append(("wait", h))
        self.out += [("wait_send", n) for n in sent]

    def overlapped_sends(self, kind: str, sends) -> None:
        """The sends of one `overlap_p2p_comm` call of the steady state (direction `kind`): megatron does not wait
        for them in the call; once it is issued, it waits for the send the previous call in that direction left
        (`send_next_wait_handle` / `send_prev_wait_handle`) and keeps this call's (or none) for the next one."""
        sent = [self.send(peer, op) for peer, op in sends]
        if self.unwaited[kind] is not None:
            self.out.append(("wait_send", self.unwaited[kind]))
        self.unwaited[kind] = sent[0] if sent else None


def _program_1f1b(r: int, p: int, m: int) -> list[tuple]:
    w = _Writer()
    first, last = r == 0, r == p - 1
    warm = min(p - r - 1, m)
    rest = m - warm
    from_prev = [] if first else [r - 1]
    from_next = [] if last else [r + 1]

    def out(op):  # send_forward / send_backward are no-ops at the ends of the pipeline
        if op.kind == "F":
            return [] if last else [(r + 1, op)]
        return [] if first else [(r - 1, op)]

    for i in range(warm):
        w.exchange(receives=from_prev)  # recv_forward
        w.run(Op("F", r, i))
        w.exchange(sends=out(Op("F", r, i)))  # send_forward
    if rest:
        w.exchange(receives=from_prev)
    for i in range(rest):
        w.run(Op("F", r, warm + i))
        w.exchange(sends=out(Op("F", r, warm + i)), receives=from_next)  # send_forward_recv_backward
        w.run(Op("B", r, i))
        # send_backward, or send_backward_recv_forward for the next pair
        w.exchange(sends=out(Op("B", r, i)), receives=[] if i == rest - 1 else from_prev)
    for i in range(rest, m):
        w.exchange(receives=from_next)  # recv_backward
        w.run(Op("B", r, i))
        w.exchange(sends=out(Op("B", r, i)))  # send_backward
    return w.out


def _program_interleaved(r: int, p: int, v: int, m: int, g: int, overlap: bool) -> list[tuple]:
    w = _Writer()
    table = schedule_table(m, v, g)
    total = m * v
    warm = min((p - r - 1) * 2 + (v - 1) * g, total)
    all_warm = warm == total
    rest = total - warm
    first, last = r == 0, r == p - 1
    nxt, prv = (r + 1) % p, (r - 1) % p

    def vstage(k: int, forward: bool) -> int:  # megatron's get_model_chunk_id
        vp = table[k % total][1]
        return vp if forward else v - 1 - vp

    def fop(k: int) -> Op:
        return Op("F", vstage(k, True) * p + r, table[k][0])

    def bop(k: int) -> Op:
        return Op("B", vstage(k, False) * p + r, table[k][0])

    def sends_output(k: int) -> bool:  # the last chunk's output is the loss: nothing to send
        return not (last and vstage(k, True) == v - 1)

    def sends_grad(k: int) -> bool:  # the first chunk's input is the embedding's: no gradient to send
        return not (first and vstage(k, False) == 0)

    def expects(k: int, forward: bool) -> bool:
        """megatron's recv_tensor_from_previous_stage: whether the call after iteration k receives. The leading
        stage (rank 0 forward, the last rank backward) receives what the ending stage produced p - 1 iterations
        earlier, unless that was the ending stage's last virtual stage (it sends nothing)."""
        if not (first if forward else last):
            return True
        if k < p - 1:
            return False
        return vstage(k - (p - 1), forward) != (v - 1 if forward else 0)

    fwd_handles: deque[int] = deque()
    bwd_handles: deque[int] = deque()
    if not first:
        w.exchange(receives=[prv])  # recv_forward for the first forward
    for k in range(warm):
        recv_prev = expects(k, True) and k != total - 1
        w.run(fop(k))
        sends = [(nxt, fop(k))] if sends_output(k) else []
        receives = [prv] if recv_prev else []
        if k == warm - 1 and not all_warm and not overlap:
            # send_forward_backward_recv_forward_backward: also waits for the first backward's gradient
            w.exchange(sends, receives + ([] if last else [nxt]))
        else:
            # send_forward_recv_forward, blocking even with overlap_p2p_comm (megatron overlaps the warm-up's calls
            # only with overlap_p2p_comm_warmup_flush, which the project leaves off)
            w.exchange(sends, receives)
        if k == warm - 1 and not all_warm and overlap and not last:
            bwd_handles.append(w.post(nxt))  # send_backward_recv_backward(None, recv_next, overlap_p2p_comm)
    for k in range(rest):
        fk, bk = warm + k, k
        recv_prev = expects(fk, True) and k != rest - 1
        recv_next = expects(bk, False)
        if overlap:
            if not (first and vstage(fk, True) == 0) and fwd_handles:  # pre_forward
                w.out.append(("wait", fwd_handles.popleft()))
            w.run(fop(fk))
            w.overlapped_sends("F", [(nxt, fop(fk))] if sends_output(fk) else [])  # post_forward
            if recv_prev:
                fwd_handles.append(w.post(prv))
            if not (last and vstage(bk, False) == v - 1) and bwd_handles:  # pre_backward
                w.out.append(("wait", bwd_handles.popleft()))
            w.run(bop(bk))
            w.overlapped_sends("B", [(prv, bop(bk))] if sends_grad(bk) else [])  # post_backward
            if recv_next:
                bwd_handles.append(w.post(nxt))
        else:
            w.run(fop(fk))
            w.run(bop(bk))
            sends = ([(nxt, fop(fk))] if sends_output(fk) else []) + ([(prv, bop(bk))] if sends_grad(bk) else [])
            w.exchange(sends, ([prv] if recv_prev else []) + ([nxt] if recv_next else []))
    if all_warm and not last:
        w.exchange(receives=[nxt])  # recv_backward for the first backward
    for k in range(rest, total):
        if not (last and vstage(k, False) == v - 1) and k != 0 and bwd_handles:
            w.out.append(("wait", bwd_handles.popleft()))
        recv_next = expects(k, False) and k != total - 1
        w.run(bop(k))
        w.exchange([(prv, bop(k))] if sends_grad(k) else [], [nxt] if recv_next else [])  # send_backward_recv_backward
    if fwd_handles or bwd_handles:
        raise AssertionError("receives posted but never waited for")  # megatron asserts the same at its end
    return w.out


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


class CompiledSchedule:
    """The dependency graph of one step: for every op, the op before it on its rank and the ops whose messages
    its rank waited for since then (each arriving one hop after that op ends). Built once per (p, v, m, group,
    overlap_p2p_comm); `schedule()` caches it.

    orders[r]: rank r's ops; deps[op]: the message-releasing ops it waits for; held[r]: the non-dominated
    vectors of in-flight micro-batches per chunk of rank r (chunk r + j p is entry j), for peak memory."""

    def __init__(self, p: int, v: int, m: int, group: int | None = None, overlap_p2p_comm: bool = False):
        self.p, self.v, self.m, self.chunks = p, v, m, p * v
        self.overlap_p2p_comm = overlap_p2p_comm
        programs = [rank_program(r, p, v, m, group, overlap_p2p_comm) for r in range(p)]
        self.orders = [[ins[1] for ins in prog if ins[0] == "run"] for prog in programs]
        if self.orders != [rank_order(r, p, v, m, group) for r in range(p)]:
            raise AssertionError("rank programs disagree with rank_order")
        self.deps = self._match_messages(programs)
        self._levels()
        self.held = [_held_vectors(self.orders[r], r, p, v) for r in range(p)]

    def _match_messages(self, programs) -> dict[Op, tuple[Op, ...]]:
        sent: dict[tuple[int, int], list[tuple[Op, Op]]] = {}  # (src, dst) -> [(payload, releasing op)]
        sends_of: list[list[tuple[int, int]]] = []  # [rank][n - 1] -> (dst, index in sent[(rank, dst)])
        for r, prog in enumerate(programs):
            last_run, waited = None, False
            sends_of.append([])
            for ins in prog:
                if ins[0] == "run":
                    last_run, waited = ins[1], False
                elif ins[0] == "wait":
                    waited = True
                elif ins[0] == "send":
                    if last_run is None or waited:
                        raise AssertionError(f"rank {r} sends {ins[2]} before computing it or after waiting")
                    queue = sent.setdefault((r, ins[1]), [])
                    sends_of[r].append((ins[1], len(queue)))
                    queue.append((ins[2], last_run))
        # When does dst post its n-th receive from src? After its last op before that, and after whatever it
        # waited for since: (src, dst) -> [(last op or None, waits since: ("recv", releasing op) or ("send", n))].
        posts: dict[tuple[int, int], list[tuple[Op | None, tuple]]] = {}
        for r, prog in enumerate(programs):
            last_run, since, taken, releases = None, [], {}, {}
            for ins in prog:
                if ins[0] == "run":
                    last_run, since = ins[1], []
                elif ins[0] == "post":
                    n = taken.get(ins[1], 0)
                    taken[ins[1]] = n + 1
                    releases[ins[2]] = sent[(ins[1], r)][n][1]
                    posts.setdefault((ins[1], r), []).append((last_run, tuple(since)))
                elif ins[0] == "wait":
                    since.append(("recv", releases[ins[1]]))
                elif ins[0] == "wait_send":
                    since.append(("send", ins[1]))

        resolving: set[tuple[int, int]] = set()

        @cache
        def receiver_ready(src: int, n: int) -> tuple[Op, ...]:
            """The ops after whose end (plus a hop) src's n-th send completes: gloo and NCCL match a send with its
            receive before moving the data, so it waits for the peer's notice that the receive is posted. (A
            notice that itself waited for a message counts that message's hop once, not twice.)"""
            if (src, n) in resolving:
                raise AssertionError("schedule deadlock: sends wait for each other's receives")
            resolving.add((src, n))
            dst, k = sends_of[src][n - 1]
            last_run, since = posts[(src, dst)][k]
            out = [] if last_run is None else [last_run]
            for kind, what in since:
                out += [what] if kind == "recv" else list(receiver_ready(dst, what))
            resolving.discard((src, n))
            return tuple(dict.fromkeys(out))

        deps: dict[Op, tuple[Op, ...]] = {}
        for r, prog in enumerate(programs):
            posted, taken = {}, {}
            pending: list[Op] = []
            have: set[Op] = set()
            received_unused = False
            for ins in prog:
                if ins[0] == "wait_send":
                    pending += receiver_ready(r, ins[1])
                elif ins[0] == "post":
                    peer = ins[1]
                    n = taken.get(peer, 0)
                    taken[peer] = n + 1
                    posted[ins[2]] = sent[(peer, r)][n]
                elif ins[0] == "wait":
                    payload, release = posted.pop(ins[1])
                    pending.append(release)
                    have.add(payload)
                    received_unused = True
                elif ins[0] == "run":
                    op = ins[1]
                    needs = self._remote_input(op)
                    if needs is not None and needs not in have:
                        raise AssertionError(f"rank {r} runs {op} before receiving {needs}")
                    deps[op] = tuple(dict.fromkeys(pending))
                    pending, received_unused = [], False
            # (The sends waited for after the last op only delay the end of the step by a hop: not modelled.)
            if received_unused or posted:
                raise AssertionError(f"rank {r} ends with receives outstanding")
            for (src, dst), msgs in sent.items():
                if dst == r and taken.get(src, 0) != len(msgs):
                    raise AssertionError(f"rank {r} receives {taken.get(src, 0)} of {len(msgs)} messages from {src}")
        return deps

    def _remote_input(self, op: Op) -> Op | None:
        """The op on another rank whose result `op` consumes, or None (first chunk's forward, last chunk's
        backward, or no pipeline)."""
        if self.p == 1:
            return None
        if op.kind == "F":
            return Op("F", op.chunk - 1, op.micro) if op.chunk > 0 else None
        return Op("B", op.chunk + 1, op.micro) if op.chunk < self.chunks - 1 else None

    def _levels(self) -> None:
        """Number the ops in a dependency order and group them into levels (an op's level is one more than any
        op it waits for), so each level is evaluated as one vectorised step."""
        index: dict[Op, int] = {}
        level: dict[Op, int] = {}
        pos = [0] * self.p
        remaining = sum(len(o) for o in self.orders)
        ordered: list[Op] = []
        while remaining:
            progressed = False
            for r, order in enumerate(self.orders):
                while pos[r] < len(order):
                    op = order[pos[r]]
                    if any(d not in level for d in self.deps[op]):
                        break
                    before = level[order[pos[r] - 1]] if pos[r] else -1
                    level[op] = 1 + max([before] + [level[d] for d in self.deps[op]])
                    index[op] = len(ordered)
                    ordered.append(op)
                    pos[r] += 1
                    remaining -= 1
                    progressed = True
            if not progressed:
                raise AssertionError("schedule deadlock: the rank programs wait for each other")
        self.ops, self.index = ordered, index
        n = len(ordered)
        self.prev = {op: (order[j - 1] if j else None) for order in self.orders for j, op in enumerate(order)}
        width = max([len(d) for d in self.deps.values()] + [0])
        by_level: dict[int, list[Op]] = {}
        for op in ordered:
            by_level.setdefault(level[op], []).append(op)
        self.levels = []
        for lvl in sorted(by_level):
            ops = by_level[lvl]
            nodes = np.array([index[o] for o in ops])
            prev = np.array([index[self.prev[o]] if self.prev[o] is not None else n for o in ops])
            deps = np.full((len(ops), width), n + 1)
            for j, o in enumerate(ops):
                deps[j, :len(self.deps[o])] = [index[d] for d in self.deps[o]]
            column = np.array([o.chunk + (self.chunks if o.kind == "B" else 0) for o in ops])
            has_deps = width > 0 and bool((deps < n).any())
            self.levels.append((nodes, prev, deps if has_deps else None, column))
        self.last_ops = np.array([index[o[-1]] for o in self.orders])

    def end_times(self, forward, backward, p2p: float = 0.0) -> np.ndarray:
        """End time of every op (rows in `self.ops` order) for a batch of splits: forward, backward are
        [batch, chunks] seconds per micro-batch; returns [ops, batch]."""
        fwd, bwd = np.atleast_2d(np.asarray(forward, float)), np.atleast_2d(np.asarray(backward, float))
        duration = np.concatenate([fwd, bwd], axis=1).T
        n = len(self.ops)
        end = np.empty((n + 2, fwd.shape[0]))
        end[n] = 0.0
        end[n + 1] = -math.inf
        hop = p2p if self.p > 1 else 0.0
        for nodes, prev, deps, column in self.levels:
            t = end[prev]
            if deps is not None:
                t = np.maximum(t, end[deps].max(axis=1) + hop)
            end[nodes] = t + duration[column]
        return end[:n]

    def pipeline_times(self, forward, backward, p2p: float = 0.0) -> np.ndarray:
        """When the last rank finishes its last backward, for a batch of splits ([batch] seconds)."""
        return self.end_times(forward, backward, p2p)[self.last_ops].max(axis=0)

    def peak_activations(self, activation_bytes) -> np.ndarray:
        """[batch, p] peak bytes each rank holds, from [batch, chunks] bytes per in-flight micro-batch."""
        act = np.atleast_2d(np.asarray(activation_bytes, float))
        out = np.empty((act.shape[0], self.p))
        for r in range(self.p):
            own = act[:, r::self.p]  # chunks r, r + p, ... in that order
            out[:, r] = (own @ self.held[r].T).max(axis=1)
        return out


def _held_vectors(order: list[Op], rank: int, p: int, v: int) -> np.ndarray:
    """In-flight micro-batches per chunk of the rank at every moment, without vectors another one dominates."""
    held, seen = [0] * v, set()
    for op in order:
        held[(op.chunk - rank) // p] += 1 if op.kind == "F" else -1
        seen.add(tuple(held))
    keep = [h for h in seen if not any(o != h and all(a >= b for a, b in zip(o, h)) for o in seen)]
    return np.array(sorted(keep), dtype=float)


@lru_cache(maxsize=64)
def schedule(p: int, v: int, m: int, group: int | None = None, overlap_p2p_comm: bool = False) -> CompiledSchedule:
    """The compiled schedule for these sizes and code path (cached: a search evaluates thousands of splits)."""
    return CompiledSchedule(p, v, m, group, overlap_p2p_comm)


def simulate(forward: list[float], backward: list[float], p: int, m: int, p2p: float = 0.0,
             activation_bytes: list[float] | None = None, group: int | None = None,
             optimizer: list[float] | None = None, cores: int | None = None,
             shared_slowdown: dict[int, float] | None = None, overlap_p2p_comm: bool = False) -> StepSimulation:
    """Simulate one step. forward[c], backward[c]: seconds of one micro-batch on chunk c (len = p * v);
    p2p: seconds per activation or gradient transfer between ranks; activation_bytes[c]: bytes chunk c keeps
    per in-flight micro-batch; group: megatron's microbatch_group_size_per_vp_stage (default p);
    optimizer[r]: seconds of rank r's optimizer step; cores: CPU cores the ranks share (None: one device each);
    shared_slowdown: measured slowdown per number of ranks computing at once (see `sharing_slowdown`);
    overlap_p2p_comm: megatron's setting of that name (interleaved schedules only: see the module docstring)."""
    chunks = len(forward)
    if chunks != len(backward) or chunks % p:
        raise ValueError(f"need p * v forward and backward times, got {len(forward)}, {len(backward)} for p={p}")
    if m < 1:
        raise ValueError(f"need at least one micro-batch, got {m}")
    if cores is not None and cores < 1:
        raise ValueError(f"cores must be positive, got {cores}")
    v = chunks // p
    sched = schedule(p, v, m, group, overlap_p2p_comm)
    act = activation_bytes or [0.0] * chunks

    def duration(op: Op) -> float:
        return forward[op.chunk] if op.kind == "F" else backward[op.chunk]

    if cores is None or (cores >= p and not shared_slowdown):
        ends = sched.end_times([forward], [backward], p2p)[:, 0]
        end = {op: float(t) for op, t in zip(sched.ops, ends)}
        start = {op: t - duration(op) for op, t in end.items()}
    else:
        start, end = _run_shared(sched, duration, p2p if p > 1 else 0.0,
                                 lambda k: sharing_slowdown(k, cores, shared_slowdown))
    pipeline_time = max(end[o[-1]] for o in sched.orders)
    step_time = pipeline_time + max(optimizer or [0.0])
    busy = [sum(duration(op) for op in sched.orders[r]) + (optimizer[r] if optimizer else 0.0) for r in range(p)]
    idle = [step_time - b for b in busy]
    peaks = [float(x) for x in sched.peak_activations([act])[0]]
    counts = [int(h.sum(axis=1).max()) for h in sched.held]
    bubble = sum(idle) / (p * step_time) if step_time > 0 else 0.0
    return StepSimulation(step_time, busy, idle, bubble, peaks, start, end, counts, pipeline_time)


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


def _run_shared(sched: CompiledSchedule, duration, hop: float, slowdown) -> tuple[dict, dict]:
    """Start and end of every op when the ranks share a host's cores: an event loop over op starts and ends in
    which the k running ops each advance at 1 / slowdown(k) seconds of work per second."""
    orders = sched.orders
    start: dict[Op, float] = {}
    end: dict[Op, float] = {}
    pos = [0] * len(orders)
    free = [0.0] * len(orders)
    left: dict[int, float] = {}  # rank -> seconds of work left on its running op
    now = 0.0

    def ready_time(op: Op, free_at: float) -> float | None:
        deps = sched.deps[op]
        if any(d not in end for d in deps):
            return None
        return max([free_at] + [end[d] + hop for d in deps])

    while any(pos[r] < len(o) for r, o in enumerate(orders)):
        next_ready = math.inf
        for r, order in enumerate(orders):
            if r in left or pos[r] == len(order):
                continue
            ready = ready_time(order[pos[r]], free[r])
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
