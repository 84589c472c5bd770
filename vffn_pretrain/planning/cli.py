"""`vffn-plan [options] [overrides]`: plan the pipeline layout of the run a Hydra config describes.

Prints which of megatron's schedules the run uses (1F1B, or interleaved 1F1B with or without
`parallel.overlap_p2p_comm`), then a table (stage, layers, predicted forward/backward time per micro-batch,
predicted memory, idle share) for the planned layout next to the even split (when legal), megatron's
first/last-stage split (when legal) and an explicit `parallel.pipeline_layout` (when given; any layout the trainer
accepts, e.g. a chunk holding only the embedding). `--json` prints the same as one JSON object, with
`overlap_p2p_comm`, the cost of every item (`items`: embedding, each layer, head; seconds per micro-batch) and of
one P2P hop (`p2p_s`), enough to re-simulate any layout. `vffn-plan calibrate [--out FILE] [overrides]` measures
this machine's rates (see planning/calibrate.py).

Options: --micro-batches M (default: train.global_batch_size / (train.micro_batch_size x --dp); at most 1024),
--dp (default 1; at most 1e6), --memory-gib G (per device; default unlimited), --metrics PATH (loop mixes from a
metrics.jsonl; default uniform), --checkpoint DIR (loop mixes from a checkpoint's loop_stats.json; wins over
--metrics), --calibration FILE (default: analytic costs of --device, H100), --bytes-per-param (default 18),
--shared-cores N (the ranks share N CPU cores, as gloo runs on one host do; default: a device per rank; with a
calibration measured with `--shared-ranks`, its slowdown table, else lossless sharing; at most 4096).
Bad input (an option, a file, a config key, a micro-batch count megatron's schedule refuses): one line naming
it, exit 2. Ctrl-C, SIGTERM, SIGHUP: one line, exit 130. Planning needs neither torch nor megatron, so the command starts in about a second.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.overrides import compose_config
from vffn_pretrain.model.shapes import counting_shapes
from vffn_pretrain.planning import costs, planner
from vffn_pretrain.planning.loops import (
    LOOP_STATS_FILE,
    LoopStatsError,
    checkpoint_loop_stats,
    latest_loop_mixes,
)
from vffn_pretrain.planning.timing import DEVICE_PROFILES, Timing
from vffn_pretrain.process.exits import EXIT_BAD_CONFIG, OneLineArgumentParser
from vffn_pretrain.process.streams import survive_closed_output

MAX_MICRO_BATCHES = 1024  # planning time grows with the micro-batches (7B, PP 8, VPP 2, 1024: about a minute)
MAX_DP = 1_000_000
MAX_SHARED_CORES = 4096


def _parser() -> argparse.ArgumentParser:
    ap = OneLineArgumentParser(prog="vffn-plan", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=354m parallel.pp=4")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--micro-batches", type=int)
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--memory-gib", type=float)
    ap.add_argument("--metrics")
    ap.add_argument("--checkpoint")
    ap.add_argument("--calibration")
    ap.add_argument("--device", default="H100")
    ap.add_argument("--bytes-per-param", type=float, default=planner.BYTES_PER_PARAM)
    ap.add_argument("--shared-cores", type=int)
    return ap


def check_options(args) -> None:
    """Every option on its own, before any config is read (ConfigError naming the option)."""
    def count(flag: str, value, cap: int, optional: bool = True):
        if value is None and optional:
            return
        if not 1 <= value <= cap:
            raise ConfigError(flag, f"must be an integer from 1 to {cap}, got {value}")

    def number(flag: str, value):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(flag, f"must be a positive finite number, got {value}")

    count("--micro-batches", args.micro_batches, MAX_MICRO_BATCHES)
    count("--dp", args.dp, MAX_DP, optional=False)
    count("--shared-cores", args.shared_cores, MAX_SHARED_CORES)
    number("--memory-gib", args.memory_gib)
    number("--bytes-per-param", args.bytes_per_param)
    if args.device not in DEVICE_PROFILES:
        raise ConfigError("--device", f"unknown device {args.device!r}; known: {', '.join(DEVICE_PROFILES)}")
    for flag, path in (("--metrics", args.metrics), ("--checkpoint", args.checkpoint)):
        if path is not None and not Path(path).exists():
            raise ConfigError(flag, f"{path} does not exist")
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise ConfigError("--checkpoint", f"{args.checkpoint} is not a checkpoint directory")
    if args.calibration is not None:
        _timing(args)


def _timing(args) -> Timing:
    try:
        return Timing.load(args.calibration) if args.calibration else Timing.analytic(args.device)
    except (OSError, ValueError) as e:
        raise ConfigError("--calibration" if args.calibration else "--device", str(e)) from None


def build_request(cfg, args) -> tuple[planner.PlanRequest, str | None]:
    """The planner's request for a validated RunConfig and the options (already `check_options`ed); also the
    explicit layout if any. Loop mixes come from args.checkpoint, else args.metrics (which must hold statistics
    unless args.metrics_optional), else uniform; ConfigError names the option whose input is at fault."""
    m, f, par, t = cfg.model, cfg.ffn, cfg.parallel, cfg.train
    shape, ffns = counting_shapes(m, f, tp=par.tp, seq_length=t.seq_length)
    ffns = ffns if isinstance(ffns, list) else [ffns] * m.num_layers
    max_loops = [x.max_loops if x.traits.adaptive_depth else None for x in ffns]
    step = costs.StepShape(t.micro_batch_size, t.seq_length, par.tp, par.sp,
                           4 if cfg.system.precision == "fp32" else 2, token_sparse=f.token_sparse_recursion)
    mixes = None
    try:
        if getattr(args, "checkpoint", None):
            saved = checkpoint_loop_stats(args.checkpoint, max_loops)
            if saved is None:
                raise ConfigError("--checkpoint", f"{args.checkpoint} has no {LOOP_STATS_FILE}")
            mixes = saved["mixes"]
        elif args.metrics:
            mixes = latest_loop_mixes(args.metrics, max_loops, required=not getattr(args, "metrics_optional", False))[0]
    except LoopStatsError as e:
        raise ConfigError("--checkpoint" if getattr(args, "checkpoint", None) else "--metrics", str(e)) from None
    items = costs.model_items(shape, ffns, step, mixes)
    micro = args.micro_batches or t.global_batch_size // (t.micro_batch_size * args.dp)
    if micro < 1:
        raise ConfigError("train.global_batch_size", "smaller than train.micro_batch_size x --dp")
    budget = args.memory_gib * 2**30 if args.memory_gib else None
    try:
        req = planner.PlanRequest(items, par.pp, par.effective_vpp or 1, micro, _timing(args), budget,
                                  args.bytes_per_param, cores=getattr(args, "shared_cores", None),
                                  overlap_p2p_comm=par.p2p_overlap)
    except planner.PlanError as e:
        key = e.key
        if key == "micro-batches":
            key = "--micro-batches" if args.micro_batches else "train.global_batch_size"
        raise ConfigError(key, str(e).split(": ", 1)[-1]) from None
    return req, par.pipeline_layout


def schedule_name(req: planner.PlanRequest) -> str:
    """Which of megatron's code paths the run takes (what the planner simulates)."""
    if req.p == 1:
        return "no pipeline"
    if req.v == 1:
        return "1F1B (forward_backward_pipelining_without_interleaving)"
    if req.overlap_p2p_comm:
        return "interleaved 1F1B with overlap_p2p_comm (outputs sent right after each forward)"
    return ("interleaved 1F1B without overlap_p2p_comm (a forward's output is sent after its iteration's "
            "backward; set parallel.overlap_p2p_comm=true to overlap)")


def _describe(req: planner.PlanRequest, name: str, plan: planner.Plan) -> dict:
    stages = []
    for r in range(req.p):
        chunks = list(range(r, req.chunks, req.p))
        stages.append({
            "stage": r, "layers": [plan.split[c] for c in chunks],
            "forward_s": sum(plan.chunk_forward[c] for c in chunks),
            "backward_s": sum(plan.chunk_backward[c] for c in chunks),
            "memory_gib": plan.memory[r] / 2**30, "idle_s": plan.sim.idle[r], "recompute": plan.recompute[r]})
    return {"name": name, "layout": plan.layout, "step_time_s": plan.step_time, "bubble": plan.sim.bubble,
            "peak_memory_gib": max(plan.memory) / 2**30, "feasible": plan.feasible, "stages": stages}


def _items(req: planner.PlanRequest) -> list[dict]:
    names = ["embedding"] + [f"layer {i} ({it.kind})" for i, it in enumerate(req.items[1:-1], 1)] + ["head"]
    return [{"name": name, "forward_s": req.timing.forward_s(it), "backward_s": req.timing.backward_s(it)}
            for name, it in zip(names, req.items)]


def report(req: planner.PlanRequest, explicit: str | None) -> dict:
    """The JSON report: the planned layout (unless the chunks outnumber the layers and a layout is given), the
    even and first/last splits where legal, the given layout, and what re-simulating any of them needs."""
    rows, note, bound = [], None, None
    try:
        rows.append(_describe(req, "planned", planner.plan(req)))
        # The bound enumerates no more splits than the plan did, so it never takes longer than planning.
        bound = planner.lower_bound(req, planner.EXHAUSTIVE_WORK)
    except planner.PlanError as e:
        if explicit is None or e.key != "parallel.pp":
            raise
        note = f"no planned layout: {e}"
    if req.num_layers % req.chunks == 0:
        rows.append(_describe(req, "even", planner.evaluate(req, planner.even_split(req.num_layers, req.chunks))))
    first_last = planner.first_last_split(req.num_layers, req.chunks)
    if first_last:
        rows.append(_describe(req, "first/last", planner.evaluate(req, first_last)))
    if explicit:
        cuts = planner.layout_cuts(explicit, req.num_layers, req.p)
        rows.append(_describe(req, "given", planner.evaluate_cuts(req, cuts)))
    rep = {"p": req.p, "v": req.v, "micro_batches": req.m, "timing": req.timing.source,
           "overlap_p2p_comm": req.overlap_p2p_comm, "schedule": schedule_name(req),
           "p2p_s": req.timing.p2p_s(req.items[1].input_bytes) if req.p > 1 else 0.0, "items": _items(req),
           "lower_bound_s": bound, "plans": rows}
    if note:
        rep["note"] = note
    return rep


def _print_table(rep: dict) -> None:
    print(f"PP={rep['p']} VPP={rep['v']} micro-batches={rep['micro_batches']} costs: {rep['timing']}")
    print(f"schedule: {rep['schedule']}")
    if rep["lower_bound_s"] is not None:
        print(f"lower bound {rep['lower_bound_s']:.4g} s")
    if rep.get("note"):
        print(rep["note"])
    for row in rep["plans"]:
        print(f"\n{row['name']}: {row['layout']}  step {row['step_time_s']:.4g} s  bubble {row['bubble']:.1%}  "
              f"peak {row['peak_memory_gib']:.2f} GiB{'' if row['feasible'] else '  (over budget)'}")
        print(f"  {'stage':>5} {'layers':>10} {'fwd s/mb':>10} {'bwd s/mb':>10} {'memory GiB':>10} {'idle s':>9} "
              f"recompute")
        for s in row["stages"]:
            print(f"  {s['stage']:>5} {'+'.join(map(str, s['layers'])):>10} {s['forward_s']:>10.4g} "
                  f"{s['backward_s']:>10.4g} {s['memory_gib']:>10.2f} {s['idle_s']:>9.4g} {s['recompute']}")


def _stand_in_layout(raw) -> str | None:
    """The explicit layout, or None. Without one, the trainer insists that PP x VPP divides the layers; the
    planner exists for the other cases, so validation runs on an even stand-in layout instead."""
    par, layers = raw.parallel, raw.model.num_layers
    if not (isinstance(par.pp, int) and isinstance(par.vpp, (int, type(None))) and isinstance(layers, int)):
        return par.pipeline_layout  # the config's own validation names the bad key
    if par.pipeline_layout == "auto":  # what the trainer would plan is the "planned" row
        par.pipeline_layout = None
    if par.pipeline_layout is not None or par.pp < 2:
        return par.pipeline_layout
    chunks = par.pp * (par.vpp or 1)
    if chunks > layers:
        raise planner.PlanError("parallel.pp", f"parallel.pp x parallel.vpp = {chunks} pipeline chunks for "
                                               f"{layers} layers (model.num_layers); each chunk needs a layer")
    par.pipeline_layout = planner.layout_string(planner.even_split(layers, chunks))
    return None


def _batch_for(raw, args) -> None:
    """With --micro-batches, the config's global batch is the one that gives that many micro-batches (so the
    config's own check of the micro-batch count sees the count planned for)."""
    train = raw.train
    if args.micro_batches and isinstance(train.micro_batch_size, int) and not isinstance(train.micro_batch_size, bool):
        train.global_batch_size = args.micro_batches * train.micro_batch_size * args.dp


def main(argv: list[str] | None = None) -> int:
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        from vffn_pretrain.planning.calibrate import main as calibrate_main

        return calibrate_main(argv[1:])
    args = _parser().parse_intermixed_args(argv)  # overrides may come after options
    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible

    try:
        with interruptible():
            return _plan(args)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: one line, nothing was written
        print(f"vffn-plan: {interrupted(stop)}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _plan(args) -> int:
    """Plan the layout args describe and print the report; the exit status."""
    from vffn_pretrain.config.run import load_run_config

    try:
        check_options(args)
        raw = compose_config(args.overrides)
        explicit = _stand_in_layout(raw)
        _batch_for(raw, args)
        sizes = [raw.parallel.tp, raw.parallel.pp, raw.parallel.cp]
        world = math.prod(sizes) * args.dp if all(type(x) is int for x in sizes) else 1  # else: validation says why
        try:
            cfg = load_run_config(raw, world_size=world)
        except ConfigError as e:  # the global batch was set from --micro-batches: the flag is at fault
            if args.micro_batches and e.key == "train.global_batch_size":
                raise ConfigError("--micro-batches", str(e).split("): ", 1)[-1]) from None
            raise
        req, _ = build_request(cfg, args)
        rep = report(req, explicit)
    except (ConfigError, planner.PlanError) as e:
        print(f"vffn-plan: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        _print_table(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
