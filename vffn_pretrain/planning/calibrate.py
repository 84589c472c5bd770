"""`vffn-plan calibrate [--out FILE] [--rounds N] [overrides]`: measure this machine's cost rates for the planner.

For every FFN kind the config uses (ffn.kind, or each kind of ffn.layers), one transformer layer of the
configured shape runs forward and backward on a micro-batch of train.micro_batch_size x train.seq_length random
hidden states, `rounds` times after one warm-up; the medians divided by the cost model's FLOPs for that layer
give seconds per FLOP (forward and backward separately). The "default" rate (used by the embedding and the
LM head) is the median over the kinds. P2P is measured with gloo between two local processes (the median time
of a round trip of the layer-input-sized message and of a tiny one, halved): per-byte cost and latency. A
single-rank layer is timed (TP=1); the file is for the machine it was measured on. Writes the JSON that
`timing.Timing.load` reads (`--calibration FILE` of vffn-plan, `parallel.plan_costs` of the trainer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from vffn_pretrain.model.shapes import ffn_shapes, model_shape
from vffn_pretrain.planning import costs
from vffn_pretrain.planning.timing import Timing


def _layer_seconds(model_cfg, ffn_cfg, micro: int, seq: int, rounds: int) -> tuple[float, float]:
    """Median forward and backward seconds of layer 1 of a one-layer model of ffn_cfg.kind."""
    import dataclasses

    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.model.gpt import build_model
    from vffn_pretrain.parallel import ParallelConfig

    one = dataclasses.replace(model_cfg, num_layers=1)
    (gpt,) = build_model(one, ffn_cfg, ParallelConfig())
    ffn_state.set_training_step([gpt], 0, 1)
    layer = gpt.decoder.layers[0]
    rope = gpt.rotary_pos_emb(seq)
    fwd, bwd = [], []
    for r in range(rounds + 1):
        x = torch.randn(seq, micro, one.hidden_size, requires_grad=True)
        start = time.perf_counter()
        out = layer(hidden_states=x, attention_mask=None, rotary_pos_emb=rope)[0]
        mid = time.perf_counter()
        out.backward(torch.ones_like(out))
        end = time.perf_counter()
        if r:  # the first round warms up
            fwd.append(mid - start)
            bwd.append(end - mid)
    return statistics.median(fwd), statistics.median(bwd)


def _p2p_worker(rank: int, port: int, nbytes: list[int], rounds: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = []
    for n in nbytes:
        buf = torch.zeros(max(n // 4, 1))
        times = []
        for _ in range(rounds + 1):
            start = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            times.append((time.perf_counter() - start) / 2)
        results.append(statistics.median(times[1:]))
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def measure_p2p(nbytes: int, rounds: int) -> tuple[float, float]:
    """(seconds per byte, latency seconds) of one gloo send between two local processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_p2p_worker, args=(r, port, [4, nbytes], rounds, queue)) for r in range(2)]
    for p in procs:
        p.start()
    tiny, big = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    per_byte = max(big - tiny, 0.0) / max(nbytes - 4, 1)
    return per_byte, tiny


def calibrate(cfg, rounds: int = 5, p2p: bool = True) -> tuple[Timing, dict]:
    """Timing from measurements for a validated RunConfig; also a report {kind: {forward_s, backward_s, ...}}.
    Needs megatron's model-parallel state set up at TP = PP = 1 (a world of one)."""
    m, f, t = cfg.model, cfg.ffn, cfg.train
    shape = model_shape(m, seq_length=t.seq_length)
    step = costs.StepShape(t.micro_batch_size, t.seq_length, 1, False, 4, token_sparse=f.token_sparse_recursion)
    forward, backward, report = {}, {}, {}
    for kind in dict.fromkeys(f.layer_kinds(m.num_layers)):
        ffn_k = f.for_kind(kind)
        item = costs.layer_cost(shape, ffn_shapes(ffn_k, 1), step)
        fwd_s, bwd_s = _layer_seconds(m, ffn_k, t.micro_batch_size, t.seq_length, rounds)
        forward[kind], backward[kind] = fwd_s / item.forward_flops, bwd_s / item.backward_flops
        report[kind] = {"forward_s": fwd_s, "backward_s": bwd_s, "forward_flops": item.forward_flops,
                        "backward_flops": item.backward_flops}
    forward["default"] = statistics.median(forward.values())
    backward["default"] = statistics.median(backward.values())
    analytic = Timing.analytic("cpu")
    per_byte, latency = analytic.p2p_seconds_per_byte, analytic.p2p_latency_s
    report["p2p"] = "analytic cpu profile (not measured)"
    if p2p:
        nbytes = int(t.micro_batch_size * t.seq_length * m.hidden_size * 4)
        per_byte, latency = measure_p2p(max(nbytes, 1 << 16), rounds)
        report["p2p"] = {"seconds_per_byte": per_byte, "latency_s": latency}
    return Timing(forward, backward, {}, per_byte, latency, "calibrated"), report


def main(argv: list[str]) -> int:
    """Entry of `vffn-plan calibrate`; returns the exit code (2: bad config, one line)."""
    import json
    import sys

    from megatron.core import parallel_state as ps

    from vffn_pretrain.config import load_run_config
    from vffn_pretrain.config_errors import ConfigError
    from vffn_pretrain.parallel import ParallelConfig, init_distributed, seed_all, setup_model_parallel
    from vffn_pretrain.planning.cli import _compose

    ap = argparse.ArgumentParser(prog="vffn-plan calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", default="calibration.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-p2p", action="store_true", help="keep the analytic CPU P2P figures")
    args = ap.parse_args(argv)
    try:
        raw = _compose([*args.overrides, "parallel.tp=1", "parallel.pp=1", "parallel.vpp=null",
                        "parallel.pipeline_layout=null", "parallel.sp=false"])
        cfg = load_run_config(raw, world_size=1)
    except ConfigError as e:
        print(f"vffn-plan calibrate: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    init_distributed()
    setup_model_parallel(ParallelConfig())
    seed_all(cfg.train.seed)
    try:
        timing, report = calibrate(cfg, args.rounds, p2p=not args.no_p2p)
    finally:
        ps.destroy_model_parallel()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    timing.save(args.out, device)
    print(json.dumps({"out": args.out, "device": device, "measured": report}, indent=1))
    return 0
