"""megatron-core's own pipeline schedules, run with model chunks that sleep: the measurement the pipeline
simulator (planning/schedule.py) is checked against.

`run_schedule` runs on every rank of a world of PP gloo processes (a RankPool, one rank per pipeline stage). It
calls megatron's `get_forward_backward_func()` exactly as training does (1F1B, or interleaved with
`overlap_p2p_comm` on or off, unbatched P2P with VPP as the project configures it), on model chunks whose forward
sleeps forward_s[c] and whose backward sleeps backward_s[c] (chunk c in model order, on rank c mod PP). Ranks
mostly sleep, so PP 8 runs on two cores and the host's load barely matters; the messages are tiny, so a hop
costs gloo's latency, which `hop_seconds` measures.

Per rank it returns the start and end (`time.perf_counter`, one clock for every process of the host) of each
step, and the rank's calls in order: ("run", kind, chunk, micro) for each forward and backward, ("send", peer),
("post", peer, handle) for each receive posted and ("wait", handle) when megatron waits for it, the same
vocabulary as `planning.schedule.rank_program`. `step_seconds` turns the per-rank results into step times.
"""

from __future__ import annotations

import itertools
import time

SEQ, HIDDEN = 4, 8  # the [seq, micro-batch, hidden] tensors between stages: tiny, only their latency counts


def run_schedule(forward_s: list[float], backward_s: list[float], v: int, m: int, overlap_p2p_comm: bool,
                 steps: int = 2) -> dict:
    """One rank's part: `steps` training steps of megatron's schedule over sleeping chunks. Returns
    {"steps": [(start, end)], "calls": [...] (of the last step)}."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import setup_model_parallel

    p, rank = dist.get_world_size(), dist.get_rank()
    setup_model_parallel(ParallelConfig(pp=p, vpp=v if v > 1 else None))
    try:
        config = _config(p, v, overlap_p2p_comm)
        calls: list[tuple] = []
        chunks = [_SleepingChunk(config, j * p + rank, forward_s[j * p + rank], backward_s[j * p + rank], calls)
                  for j in range(v)]
        schedule = get_forward_backward_func()
        out = []
        for _ in range(steps):
            calls.clear()
            iterators = [iter(range(m)) for _ in chunks]
            dist.barrier()
            start = time.perf_counter()
            with _recording(calls, batched=v == 1):
                schedule(forward_step_func=_forward_step, data_iterator=iterators if v > 1 else iterators[0],
                         model=chunks if v > 1 else chunks[0], num_microbatches=m, seq_length=SEQ,
                         micro_batch_size=1, forward_only=False)
            out.append((start, time.perf_counter()))
        dist.barrier()
        return {"steps": out, "calls": list(calls)}
    finally:
        ps.destroy_model_parallel()


def measure(pool, forward_s: list[float], backward_s: list[float], v: int, m: int, overlap_p2p_comm: bool,
            steps: int = 3) -> dict:
    """Run megatron's schedule over sleeping chunks on `pool` (a RankPool, PP = its world size). Returns
    {"step_s": median of the steps after the first (which pays first-call costs), "steps_s": every step,
    "calls_match": whether every rank's P2P calls and op order are `rank_program`'s, "mismatch": the first
    difference (rank, position, simulator's call, megatron's call) or None}."""
    from vffn_pretrain.planning.schedule import rank_program

    results = pool.run(run_schedule, list(forward_s), list(backward_s), v, m, overlap_p2p_comm, steps)
    times = step_seconds(results)
    later = sorted(times[1:] or times)
    mismatch = None
    for r, res in enumerate(results):
        ours = canonical(program_calls(rank_program(r, pool.world_size, v, m, None, overlap_p2p_comm)))
        theirs = canonical(res["calls"])
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            mismatch = (r, at, ours[at] if at < len(ours) else None, theirs[at] if at < len(theirs) else None)
            break
    return {"step_s": later[len(later) // 2], "steps_s": times, "calls_match": mismatch is None,
            "mismatch": mismatch}


def hop_seconds(rounds: int = 50) -> float:
    """Half the median round trip of a stage-sized message between ranks 0 and 1 (every rank calls this)."""
    import torch
    import torch.distributed as dist

    buf = torch.zeros(SEQ, 1, HIDDEN)
    times = []
    dist.barrier()
    for _ in range(rounds):
        start = time.perf_counter()
        if dist.get_rank() == 0:
            dist.send(buf, 1)
            dist.recv(buf, 1)
        elif dist.get_rank() == 1:
            dist.recv(buf, 0)
            dist.send(buf, 0)
        times.append((time.perf_counter() - start) / 2)
    dist.barrier()
    return sorted(times)[len(times) // 2]


def op_seconds(pool, m: int = 8, steps: int = 5) -> float:
    """The host's cost of one schedule op beyond the chunk's own work (megatron's schedule code, autograd, gloo
    calls): megatron's 1F1B on `pool` (2 ranks, so no rank waits for a core) with chunks that sleep 0 s, solved
    for the op duration at which the simulator predicts the measured step. Every op of a sleeping chunk then
    takes its sleep plus this (a couple of milliseconds of Python per op on a CPU host); adding it to the
    simulator's inputs leaves the simulator itself to be checked."""
    from vffn_pretrain.planning.schedule import schedule

    p = pool.world_size
    zeros = [0.0] * p
    hop = pool.run(hop_seconds)[0]
    measured = measure(pool, zeros, zeros, 1, m, False, steps)["step_s"]
    sched = schedule(p, 1, m)

    def predicted(x: float) -> float:
        return float(sched.pipeline_times([[x] * p], [[x] * p], hop)[0])

    low, high = 0.0, measured
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if predicted(mid) < measured else (low, mid)
    return (low + high) / 2


def step_seconds(results: list[dict]) -> list[float]:
    """Each step's time over the world: from the first rank leaving the barrier to the last one finishing."""
    steps = zip(*(r["steps"] for r in results))
    return [max(end for _, end in step) - min(start for start, _ in step) for step in steps]


def _config(p: int, v: int, overlap: bool):
    import torch
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=p * v, hidden_size=HIDDEN, num_attention_heads=1,
                             pipeline_model_parallel_size=p, virtual_pipeline_model_parallel_size=v if v > 1 else None,
                             pipeline_dtype=torch.float32, batch_p2p_comm=v == 1, overlap_p2p_comm=overlap,
                             use_cpu_initialization=True)


def _forward_step(data_iterator, model):
    micro = next(data_iterator)
    return model(micro), lambda out: (out.sum(), {})


def _make_chunk_class():
    import torch
    from megatron.core.enums import ModelType

    class Sleep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, chunk, micro):
            chunk.log.append(("run", "F", chunk.index, micro))
            time.sleep(chunk.forward_s)
            ctx.chunk, ctx.micro = chunk, micro
            ctx.save_for_backward(x, weight)
            return x * weight

        @staticmethod
        def backward(ctx, grad):
            chunk = ctx.chunk
            chunk.log.append(("run", "B", chunk.index, ctx.micro))
            time.sleep(chunk.backward_s)
            x, weight = ctx.saved_tensors
            return grad * weight, (grad * x).sum(), None, None

    class SleepingChunk(torch.nn.Module):
        """A model chunk megatron's schedule can drive: one weight, a forward and backward that only sleep."""

        def __init__(self, config, index: int, forward_s: float, backward_s: float, log: list):
            super().__init__()
            self.config, self.model_type = config, ModelType.encoder_or_decoder
            self.index, self.forward_s, self.backward_s, self.log = index, forward_s, backward_s, log
            self.weight = torch.nn.Parameter(torch.ones(()))
            self.input = None

        def set_input_tensor(self, tensors):
            self.input = tensors[0] if isinstance(tensors, list) else tensors

        def forward(self, micro: int):
            x = self.input if self.input is not None else torch.zeros(SEQ, 1, HIDDEN)
            return Sleep.apply(x, self.weight, self, micro)

    return SleepingChunk


_CHUNK_CLASS = None


def _SleepingChunk(*args):
    global _CHUNK_CLASS
    if _CHUNK_CLASS is None:
        _CHUNK_CLASS = _make_chunk_class()
    return _CHUNK_CLASS(*args)


class _recording:
    """Records megatron's P2P calls into `calls`: torch.distributed.isend / irecv (unbatched P2P, VPP) or the ops
    of batch_isend_irecv (batched, without VPP), and waits on receives."""

    def __init__(self, calls: list, batched: bool):
        self.calls, self.batched = calls, batched

    def __enter__(self):
        import torch.distributed as dist

        self.real = dist.isend, dist.irecv, dist.batch_isend_irecv
        handles = itertools.count(1)
        calls, (isend, irecv, batch) = self.calls, self.real

        class Waited:
            def __init__(self, work, handle):
                self.work, self.handle = work, handle

            def wait(self, *args, **kwargs):
                calls.append(("wait", self.handle))
                return self.work.wait(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(self.work, name)

        def peer(args, kwargs, key):
            return kwargs.get(key, args[1] if len(args) > 1 else None)

        def send(*args, **kwargs):
            calls.append(("send", peer(args, kwargs, "dst")))
            return isend(*args, **kwargs)

        def receive(*args, **kwargs):
            handle = next(handles)
            calls.append(("post", peer(args, kwargs, "src"), handle))
            return Waited(irecv(*args, **kwargs), handle)

        def batched(ops):
            works, out = batch(ops), []
            for op, work in zip(ops, works):
                if op.op is isend:
                    calls.append(("send", op.peer))
                    out.append(work)
                else:
                    handle = next(handles)
                    calls.append(("post", op.peer, handle))
                    out.append(Waited(work, handle))
            return out

        if self.batched:  # megatron builds P2POps from torch.distributed.isend / irecv, which must stay the real ones
            dist.batch_isend_irecv = batched
        else:
            dist.isend, dist.irecv = send, receive
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist

        dist.isend, dist.irecv, dist.batch_isend_irecv = self.real
        return False


def program_calls(program: list[tuple]) -> list[tuple]:
    """A `planning.schedule.rank_program` in the vocabulary of the recorded calls. Waits for sends are left out:
    they are not recorded (their effect shows in the step time)."""
    out = []
    for ins in program:
        if ins[0] == "wait_send":
            continue
        if ins[0] == "run":
            out.append(("run", ins[1].kind, ins[1].chunk, ins[1].micro))
        elif ins[0] == "send":
            out.append(("send", ins[1]))
        else:
            out.append(ins)
    return out


def canonical(calls: list[tuple]) -> list[tuple]:
    """Calls with each run of consecutive sends and posts (one megatron P2P call, whose even and odd ranks post
    in different orders) written as its sends, then its posts, each in their own order."""
    out, block = [], []
    for call in [*calls, ("end",)]:
        if call[0] in ("send", "post"):
            block.append(call)
            continue
        out += [c for c in block if c[0] == "send"] + [c for c in block if c[0] == "post"]
        block = []
        if call[0] != "end":
            out.append(call)
    return out
