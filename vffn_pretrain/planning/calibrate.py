"""`vffn-plan calibrate [--out FILE] [--rounds N] [--shared-ranks N] [overrides]`: measure this machine's cost rates.

Layers are timed where the planner's costs are paid: inside whole training steps (`training.step.train_step`,
megatron-core DDP, optimizer and schedule, as the trainer runs them) on micro-batches of train.micro_batch_size x
train.seq_length random tokens. For every FFN kind the config uses (ffn.kind, or each kind of ffn.layers), models
of one and of three layers of that kind run steps of 1 and of 4 micro-batches, `rounds` times each in interleaved
rounds after a warm-up, and the fastest of the rounds is kept (other processes on the machine only ever add
time, and differences of noisy figures amplify it):

* one micro-batch's cost, T(n layers, 4) - T(n layers, 1) over 3; half the difference between the three- and
  the one-layer model's is a layer's cost per micro-batch (including DDP's gradient hooks, which a layer timed alone would miss), split between
  forward and backward as a layer timed alone splits it; divided by the cost model's FLOPs: seconds per FLOP;
* what the one-layer model's micro-batch costs beyond its layer is the embedding, LM head, loss and the
  schedule's own work: the "head" rate (split 1:2 between forward and backward, like the head's FLOPs);
* what is left of a one-micro-batch step is work done once per step (gradient norm and clipping, the optimizer
  update, zeroing buffers): `optimizer_seconds_per_param`.

The "default" rate (any other item) is the median over the kinds. P2P is measured between two local processes
(the fastest round trip of the layer-input-sized message and of a tiny one, halved): per-byte cost and latency;
with gloo on a CPU machine, with NCCL between GPUs 0 and 1 on a GPU machine (with one GPU, the analytic figures of
its part). A single rank is timed (TP=1); the file is for the machine it was measured on.

The models are built and run as the trainer runs them: on this process's device (every input made there), in
the run's precision (system.precision: bf16 on a GPU by default) with the matching optimizer, and, on a GPU,
every timestamp taken after a synchronize, so that asynchronously launched kernels are timed, not their launch. Writes the JSON
that `timing.Timing.load` reads (`--calibration FILE` of vffn-plan, `parallel.plan_costs` of the trainer).

`--shared-ranks N` (CPU runs of several ranks on one host) also measures how ranks that share the host's cores
slow each other: N processes each train the three-layer model; in interleaved rounds k = 1..N of them train at
once for `--sharing-seconds` while the rest wait, and each one's steps per second is set against one rank alone
(`measure_sharing`). Lossless processor sharing would give max(1, k / cores); the table says what this machine
really loses, and `vffn-plan --shared-cores` simulates with it. Bad options: one line naming the option, exit 2.
A measurement worker that dies (killed, out of memory): one line, exit 1. Ctrl-C, SIGTERM or SIGHUP: the workers
are stopped, exit 130. Neither writes the file. The workers watch this process: killed with kill -9, it leaves
none behind. --out is written whole (FILE.partial-PID, then renamed; a killed run's partial is removed by the
next), must not lie inside the config directory it reads, replaces an existing file only when that is a
calibration, and a second calibrate writing the same --out is refused (OUT.lock, exit 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING

from vffn_pretrain.model.shapes import ffn_shapes, model_shape
from vffn_pretrain.planning import costs
from vffn_pretrain.planning.timing import DEVICE_PROFILES, Timing

if TYPE_CHECKING:
    import torch


def now() -> float:
    """A timestamp after everything queued on this process's device has run (a synchronize on a GPU: kernels are
    launched asynchronously, so the host clock alone would time their launch)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _layer_seconds(model_cfg, ffn_cfg, micro: int, seq: int, rounds: int, dtype: torch.dtype
                   ) -> tuple[float, float]:
    """Fastest forward and backward seconds of one layer of ffn_cfg.kind timed alone (for the forward share)."""
    import torch

    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.model.gpt import build_model
    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import device

    one = dataclasses.replace(model_cfg, num_layers=1)
    (gpt,) = build_model(one, ffn_cfg, ParallelConfig(), params_dtype=dtype)
    ffn_state.set_training_step([gpt], 0, 1)
    layer = gpt.decoder.layers[0]
    rope = gpt.rotary_pos_emb(seq)
    fwd, bwd = [], []
    for r in range(rounds + 1):
        x = torch.randn(seq, micro, one.hidden_size, device=device(), dtype=dtype, requires_grad=True)
        start = now()
        out = layer(hidden_states=x, attention_mask=None, rotary_pos_emb=rope)[0]
        mid = now()
        out.backward(torch.ones_like(out))
        end = now()
        if r:  # the first round warms up
            fwd.append(mid - start)
            bwd.append(end - mid)
    return min(fwd), min(bwd)


LAYERS = (1, 3)  # models of this many layers ...
MICRO_BATCHES = (1, 4)  # ... run steps of this many micro-batches


class _StepTimer:
    """A model of `layers` layers of one FFN kind with megatron-core DDP and optimizer, and its step timer."""

    def __init__(self, model_cfg, ffn_cfg, train_cfg, layers: int, dtype: torch.dtype):
        import torch

        from vffn_pretrain.model.ffn import state as ffn_state
        from vffn_pretrain.model.gpt import build_model
        from vffn_pretrain.parallel.config import ParallelConfig
        from vffn_pretrain.parallel.init import device
        from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp

        shape = dataclasses.replace(model_cfg, num_layers=layers)
        self.chunks = build_model(shape, ffn_cfg, ParallelConfig(), params_dtype=dtype, fused_wgrad=True)
        ffn_state.set_training_step(self.chunks, 0, 1)
        self.ddp = wrap_ddp(self.chunks, ParallelConfig())
        self.optimizer = build_optimizer(self.ddp, OptimConfig(lr=1e-4, min_lr=1e-5), ParallelConfig(),
                                         bf16=dtype == torch.bfloat16)
        self.params = sum(p.numel() for c in self.chunks for p in c.parameters())
        self.b, self.s, self.vocab = train_cfg.micro_batch_size, train_cfg.seq_length, shape.vocab_size
        self.device = device()
        self.gen = torch.Generator().manual_seed(0)

    def step_seconds(self, micro_batches: int) -> float:
        import torch

        from vffn_pretrain.training.step import train_step

        b, s = self.b, self.s
        batches = []
        for i in range(micro_batches):
            tokens = torch.randint(0, self.vocab, (b, s + 1), generator=self.gen).to(self.device)
            batches.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
                            "loss_mask": torch.ones(b, s, device=self.device),
                            "position_ids": torch.arange(s, device=self.device).expand(b, s).contiguous(),
                            "mb_key": (0, i)})
        start = now()
        train_step(self.ddp, self.optimizer, batches, seq_length=s, micro_batch_size=b)
        return now() - start


def _step_times(model_cfg, ffn_cfg, train_cfg, rounds: int, dtype: torch.dtype) -> dict:
    """Fastest step seconds {(layers, micro-batches): s} for 1 and 3 layers x 1 and 4 micro-batches, timed in
    interleaved rounds after one warm-up round, and the parameter counts {layers: n}."""
    timers = {n: _StepTimer(model_cfg, ffn_cfg, train_cfg, n, dtype) for n in LAYERS}
    times: dict[tuple[int, int], list[float]] = {(n, k): [] for n in timers for k in MICRO_BATCHES}
    for r in range(rounds + 1):
        for (n, k), out in times.items():
            seconds = timers[n].step_seconds(k)
            if r:
                out.append(seconds)
    return {"seconds": {key: min(v) for key, v in times.items()},
            "params": {n: t.params for n, t in timers.items()}}


@contextlib.contextmanager
def _children_ignore_sigint():
    """Processes started inside this block inherit an ignored SIGINT from their first instruction (a spawned
    interpreter keeps an ignored SIGINT ignored), so a terminal's Ctrl-C, sent to the whole process group, reaches
    only the parent, which stops them; setting the handler in the child would leave a window for a traceback."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class MeasurementError(RuntimeError):
    """A measurement that cannot give a figure: a worker of a multi-process one died or exited without its
    results, or what was measured was lost in the host's noise."""


def _run_workers(procs: list, queue, count: int, what: str) -> list:
    """Start `procs` (SIGINT ignored, see above), take `count` results from `queue` and wait for them to exit.
    A worker that dies fails the measurement at once rather than leaving the others waiting for it (at a
    barrier, or in gloo's 30-minute rendezvous); whatever happens, no worker outlives this call."""
    results = []
    try:
        with _children_ignore_sigint():
            for p in procs:
                p.start()
        while len(results) < count:
            try:
                results.append(queue.get(timeout=5))
            except Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    raise MeasurementError(f"a worker of the {what} measurement died (exit {failed[0]})") from None
                if all(p.exitcode == 0 for p in procs):
                    raise MeasurementError(f"the {what} measurement's workers exited without reporting") from None
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    return results


def _p2p_worker(rank: int, port: int, nbytes: list[int], rounds: int, out) -> None:
    """One end of the P2P measurement: gloo between CPU processes, NCCL between GPU `rank` and the other."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    results = []
    for n in nbytes:
        buf = torch.zeros(max(n // 4, 1), device=device)
        times = []
        for _ in range(rounds + 1):
            start = now()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            times.append((now() - start) / 2)
        results.append(min(times[1:]))
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def measure_p2p(nbytes: int, rounds: int) -> tuple[float, float]:
    """(seconds per byte, latency seconds) of one send between two local processes: gloo on a CPU machine,
    NCCL between GPUs 0 and 1 on a GPU machine (it needs two)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_p2p_worker, args=(r, port, [4, nbytes], rounds, queue), daemon=True)
             for r in range(2)]
    [(tiny, big)] = _run_workers(procs, queue, 1, "P2P")
    per_byte = max(big - tiny, 0.0) / max(nbytes - 4, 1)
    return per_byte, tiny


MAX_SHARED_RANKS = 64
SHARING_MICRO_BATCHES = 4  # a worker's step while k ranks share the cores: the 3-layer model, this many micro-batches


def _sharing_worker(index: int, overrides: list[str], phases: list[int], seconds: float, barrier, out) -> None:
    """One rank of the sharing measurement: a world of its own, the 3-layer model of the config's first FFN kind;
    at each phase k it trains for `seconds` if index < k (else waits at the barrier, using no CPU) and reports
    (phase number, steps per second)."""
    import torch
    import torch.distributed as dist

    from vffn_pretrain.config.overrides import compose_config
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import init_distributed, seed_all, setup_model_parallel
    from vffn_pretrain.training.numerics import params_dtype

    torch.set_num_threads(1)
    cfg = load_run_config(compose_config(overrides), world_size=1)
    # A world of one in memory: N workers each picking a free TCP port for their own store can collide.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    init_distributed()  # joins the world above; installs the CPU shims
    setup_model_parallel(ParallelConfig())
    seed_all(cfg.train.seed + index)
    kind = cfg.ffn.layer_kinds(cfg.model.num_layers)[0]
    dtype = params_dtype(cfg.system.precision)
    timer = _StepTimer(cfg.model, cfg.ffn.for_kind(kind), cfg.train, LAYERS[-1], dtype)
    timer.step_seconds(SHARING_MICRO_BATCHES)  # warm-up
    for n, k in enumerate(phases):
        barrier.wait()
        if index >= k:
            continue
        busy, steps, start = 0.0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            busy += timer.step_seconds(SHARING_MICRO_BATCHES)
            steps += 1
        out.put((n, index, steps / busy))
    barrier.wait()


def measure_sharing(overrides: list[str], ranks: int, rounds: int, seconds: float = 2.0) -> dict[int, float]:
    """How much slower one rank trains while k ranks of this host train at once, for k = 1..ranks: slowdown[k] =
    (steps per second of one rank alone) / (mean steps per second of k together), from the fastest of `rounds`
    interleaved rounds of each k. Ranks on their own devices have slowdown 1; ranks sharing c cores would have
    max(1, k / c) if the cores were shared without loss, and the table is what this machine really loses."""
    import torch.multiprocessing as mp

    phases = [k for _ in range(rounds) for k in range(1, ranks + 1)]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(ranks), ctx.Queue()
    procs = [ctx.Process(target=_sharing_worker, args=(i, overrides, phases, seconds, barrier, queue), daemon=True)
             for i in range(ranks)]
    per_phase: dict[int, list[float]] = {}
    for n, _index, rate in _run_workers(procs, queue, sum(phases), "sharing"):
        per_phase.setdefault(n, []).append(rate)
    rates: dict[int, list[float]] = {}
    for n, k in enumerate(phases):
        rates.setdefault(k, []).append(statistics.mean(per_phase[n]))
    alone = max(rates[1])
    return {k: max(1.0, alone / max(r)) for k, r in sorted(rates.items())}


def analytic_profile() -> str:
    """The DEVICE_PROFILES entry for this machine: its GPU's part when listed (else H100's), or cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name()
    return next((part for part in DEVICE_PROFILES if part != "cpu" and part in name), "H100")


def calibrate(cfg, rounds: int = 5, p2p: bool = True, sharing: tuple[list[str], int, float] | None = None
              ) -> tuple[Timing, dict]:
    """Timing from measurements for a validated RunConfig; also a report {kind: {forward_s, backward_s, ...},
    "step": {...}, "p2p": ..., "shared_slowdown": ...}. Needs megatron's model-parallel state set up at TP = PP = 1
    (a world of one). sharing: (the config's overrides, ranks, seconds per phase) to measure `measure_sharing`."""
    import torch

    from vffn_pretrain.training.numerics import params_dtype

    m, f, t = cfg.model, cfg.ffn, cfg.train
    dtype = params_dtype(cfg.system.precision)
    shape = model_shape(m, seq_length=t.seq_length)
    step = costs.StepShape(t.micro_batch_size, t.seq_length, 1, False, 4, token_sparse=f.token_sparse_recursion)
    forward, backward, report = {}, {}, {}
    beyond_layer, once_per_param = [], []
    for kind in dict.fromkeys(f.layer_kinds(m.num_layers)):
        ffn_k = f.for_kind(kind)
        item = costs.layer_cost(shape, ffn_shapes(ffn_k, 1), step)
        alone_f, alone_b = _layer_seconds(m, ffn_k, t.micro_batch_size, t.seq_length, rounds, dtype)
        (few, many), (lo, hi) = MICRO_BATCHES, LAYERS
        for attempt_rounds in (rounds, 2 * rounds, 4 * rounds):
            timed = _step_times(m, ffn_k, t, attempt_rounds, dtype)
            sec, params = timed["seconds"], timed["params"]
            per_micro = {n: (sec[(n, many)] - sec[(n, few)]) / (many - few) for n in LAYERS}
            if per_micro[hi] > per_micro[lo]:
                break  # else the layer's time was lost in the host's noise: measure again, longer
        else:
            raise MeasurementError(
                f"the time of a {kind} layer was lost in this machine's noise ({hi} layers measured no "
                f"slower than {lo}, also with {attempt_rounds} rounds): use more --rounds, a larger model or a "
                "quieter machine")
        layer = (per_micro[hi] - per_micro[lo]) / (hi - lo)
        fwd_s, bwd_s = layer * alone_f / (alone_f + alone_b), layer * alone_b / (alone_f + alone_b)
        forward[kind], backward[kind] = fwd_s / item.forward_flops, bwd_s / item.backward_flops
        beyond_layer.append(max(per_micro[lo] - layer, 0.0))
        once = [max(sec[(n, few)] - few * per_micro[n], 0.0) for n in LAYERS]
        once_per_param.append(sum(once) / sum(params.values()))
        report[kind] = {"forward_s": fwd_s, "backward_s": bwd_s, "forward_flops": item.forward_flops,
                        "backward_flops": item.backward_flops, "alone_forward_s": alone_f,
                        "alone_backward_s": alone_b, "steps_s": {f"{n} layers x {k} micro-batches": v
                                                                 for (n, k), v in sec.items()}}
    forward["default"] = statistics.median(forward.values())
    backward["default"] = statistics.median(backward.values())
    head = costs.head_cost(shape, step)
    rest = statistics.median(beyond_layer)  # embedding, head, loss and the schedule, per micro-batch
    forward["head"], backward["head"] = rest / 3 / head.forward_flops, 2 * rest / 3 / head.backward_flops
    optimizer_rate = statistics.median(once_per_param)
    report["step"] = {"per_micro_batch_beyond_layers_s": rest, "once_per_step_s_per_param": optimizer_rate}
    report["precision"] = str(dtype).removeprefix("torch.")
    profile = analytic_profile()
    analytic = Timing.analytic(profile)
    per_byte, latency = analytic.p2p_seconds_per_byte, analytic.p2p_latency_s
    report["p2p"] = f"analytic {profile} profile (not measured)"
    if p2p and (not torch.cuda.is_available() or torch.cuda.device_count() >= 2):
        nbytes = int(t.micro_batch_size * t.seq_length * m.hidden_size * dtype.itemsize)
        per_byte, latency = measure_p2p(max(nbytes, 1 << 16), rounds)
        report["p2p"] = {"seconds_per_byte": per_byte, "latency_s": latency}
    slowdown = {}
    if sharing:
        overrides, ranks, seconds = sharing
        slowdown = measure_sharing(overrides, ranks, rounds, seconds)
        report["shared_slowdown"] = {str(k): x for k, x in slowdown.items()}
    return Timing(forward, backward, {}, per_byte, latency, "calibrated", optimizer_rate, slowdown), report


MAX_ROUNDS = 1000


def check_out(out: Path) -> None:
    """--out before anything is measured: a file name in an existing directory, outside the config directory,
    and not an existing file other than a calibration (ConfigError naming --out)."""
    from vffn_pretrain.config.errors import ConfigError
    from vffn_pretrain.config.paths import CONF_DIR
    from vffn_pretrain.outputs.apart import NotOurOutput, OutputOverlapsInput, check_apart, check_replaceable

    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError("--out", f"{out} is a directory" if out.is_dir() else f"no directory {out.parent}")
    if out.exists() and not out.is_file():
        raise ConfigError("--out", f"{out} is not a regular file")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError("--out", f"{out} is not writable")
    try:
        check_apart({"--out": out}, {"the config directory": CONF_DIR})
        check_replaceable(out, ours=_is_calibration, what="a calibration file", flag="--out")
    except (OutputOverlapsInput, NotOurOutput) as e:
        raise ConfigError("--out", str(e)) from None


def _is_calibration(path: Path) -> bool:
    try:
        Timing.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def main(argv: list[str]) -> int:
    """Entry of `vffn-plan calibrate`; returns the exit code (2: bad config, one line)."""
    import json
    import sys

    from vffn_pretrain.config.errors import ConfigError
    from vffn_pretrain.config.overrides import compose_config
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.outputs.atomic import partial_path, sweep_stale_partials
    from vffn_pretrain.outputs.lock import OutputInUse, claim_output
    from vffn_pretrain.process.exits import OneLineArgumentParser
    from vffn_pretrain.process.interrupts import interrupted, interruptible

    ap = OneLineArgumentParser(prog="vffn-plan calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", default="calibration.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-p2p", action="store_true", help="keep the analytic CPU P2P figures")
    ap.add_argument("--shared-ranks", type=int, default=0,
                    help="also measure how ranks sharing this host's cores slow each other, for 1..N ranks")
    ap.add_argument("--sharing-seconds", type=float, default=2.0, help="seconds of training per measured phase")
    args = ap.parse_intermixed_args(argv)
    overrides = [*args.overrides, "parallel.tp=1", "parallel.pp=1", "parallel.vpp=null",
                 "parallel.pipeline_layout=null", "parallel.sp=false"]
    try:
        if not 1 <= args.rounds <= MAX_ROUNDS:
            raise ConfigError("--rounds", f"must be between 1 and {MAX_ROUNDS}, got {args.rounds}")
        if not 0 <= args.shared_ranks <= MAX_SHARED_RANKS:
            raise ConfigError("--shared-ranks", f"must be between 0 and {MAX_SHARED_RANKS}, got {args.shared_ranks}")
        if not 0 < args.sharing_seconds <= 600:  # (also false for nan)
            raise ConfigError("--sharing-seconds", f"must be in (0, 600], got {args.sharing_seconds}")
        out = Path(args.out)
        check_out(out)
        cfg = load_run_config(compose_config(overrides), world_size=1)
    except ConfigError as e:
        print(f"vffn-plan calibrate: {e}", file=sys.stderr)
        return 2
    # torch and megatron only once the command line is known good (--help is instant)
    import torch
    from megatron.core import parallel_state as ps

    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import init_distributed, seed_all, setup_model_parallel

    try:
        with interruptible():
            lock = claim_output(out, "--out", "vffn-plan calibrate")
    except (OutputInUse, OSError) as e:
        print(f"vffn-plan calibrate: {e}", file=sys.stderr)
        return 1
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    try:
        with interruptible():
            init_distributed()
            setup_model_parallel(ParallelConfig())
            seed_all(cfg.train.seed)
            sharing = (overrides, args.shared_ranks, args.sharing_seconds) if args.shared_ranks else None
            timing, report = calibrate(cfg, args.rounds, p2p=not args.no_p2p, sharing=sharing)
            device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
            sweep_stale_partials(out)
            partial = partial_path(out)  # a reader never sees half a file
            try:
                timing.save(partial, device)
                lock.verify()
                os.replace(partial, out)
            finally:
                partial.unlink(missing_ok=True)
    except KeyboardInterrupt as stop:
        print(f"vffn-plan calibrate: {interrupted(stop)}; {out} was not written", file=sys.stderr)
        return 130
    except (MeasurementError, OutputInUse, OSError) as e:
        print(f"vffn-plan calibrate: {e}; {out} was not written", file=sys.stderr)
        return 1
    finally:
        ps.destroy_model_parallel()
        lock.release()
    print(json.dumps({"out": args.out, "device": device, "measured": report}, indent=1))
    return 0
