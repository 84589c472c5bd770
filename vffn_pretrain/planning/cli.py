"""`vffn-plan [options] [overrides]`: plan the pipeline layout of the run a Hydra config describes.

Prints a table (stage, layers, predicted forward/backward time per micro-batch, predicted memory, idle share) for
the planned layout next to the even split (when legal), megatron's first/last-stage split (when legal) and an
explicit `parallel.pipeline_layout` (when given); `--json` prints the same as one JSON object.
`vffn-plan calibrate [--out FILE] [overrides]` measures this machine's rates (see planning/calibrate.py).

Options: --micro-batches M (default: train.global_batch_size / (train.micro_batch_size x --dp)), --dp (default 1),
--memory-gib G (per device; default unlimited), --metrics PATH (loop mixes from a metrics.jsonl; default
uniform), --checkpoint DIR (loop mixes from a checkpoint's loop_stats.json; wins over --metrics), --calibration FILE (default: analytic costs of --device, H100), --bytes-per-param (default 18),
--shared-cores N (the ranks share N CPU cores, as gloo runs on one host do; default: a device per rank; with a
calibration measured with `--shared-ranks`, its slowdown table, else lossless sharing).
Bad input: one line naming the key or option, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.overrides import compose_config
from vffn_pretrain.model.shapes import counting_shapes
from vffn_pretrain.planning import costs, planner
from vffn_pretrain.planning.loops import LOOP_STATS_FILE, checkpoint_loop_stats, latest_loop_mixes
from vffn_pretrain.planning.timing import Timing

EXIT_BAD_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vffn-plan", description=__doc__.splitlines()[0])
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


def build_request(cfg, args) -> tuple[planner.PlanRequest, str | None]:
    """The planner's request for a validated RunConfig and the CLI options; also the explicit layout if any."""
    m, f, par, t = cfg.model, cfg.ffn, cfg.parallel, cfg.train
    shape, ffns = counting_shapes(m, f, tp=par.tp, seq_length=t.seq_length)
    ffns = ffns if isinstance(ffns, list) else [ffns] * m.num_layers
    step = costs.StepShape(t.micro_batch_size, t.seq_length, par.tp, par.sp,
                           4 if cfg.system.precision == "fp32" else 2, token_sparse=f.token_sparse_recursion)
    mixes = None
    if getattr(args, "checkpoint", None):
        saved = checkpoint_loop_stats(args.checkpoint, m.num_layers)
        if saved is None:
            raise ConfigError("--checkpoint", f"{args.checkpoint} has no readable {LOOP_STATS_FILE}")
        mixes = saved["mixes"]
    elif args.metrics:
        mixes = latest_loop_mixes(args.metrics, m.num_layers)[0]
    items = costs.model_items(shape, ffns, step, mixes)
    if args.micro_batches is not None and args.micro_batches < 1:
        raise ConfigError("--micro-batches", f"must be positive, got {args.micro_batches}")
    micro = args.micro_batches or t.global_batch_size // (t.micro_batch_size * args.dp)
    if micro < 1:
        raise ConfigError("train.global_batch_size", "smaller than train.micro_batch_size x --dp")
    try:
        timing = Timing.load(args.calibration) if args.calibration else Timing.analytic(args.device)
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError("--calibration" if args.calibration else "--device", str(e)) from None
    if args.memory_gib is not None and args.memory_gib <= 0:
        raise ConfigError("--memory-gib", f"must be positive, got {args.memory_gib}")
    budget = args.memory_gib * 2**30 if args.memory_gib else None
    cores = getattr(args, "shared_cores", None)
    if cores is not None and cores < 1:
        raise ConfigError("--shared-cores", f"must be positive, got {cores}")
    req = planner.PlanRequest(items, par.pp, par.effective_vpp or 1, micro, timing, budget, args.bytes_per_param,
                              cores=cores)
    return req, par.pipeline_layout


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


def report(req: planner.PlanRequest, explicit: str | None) -> dict:
    best = planner.plan(req)
    rows = [_describe(req, "planned", best)]
    even = planner.even_split(req.num_layers, req.chunks)
    if req.num_layers % req.chunks == 0:
        rows.append(_describe(req, "even", planner.evaluate(req, even)))
    first_last = planner.first_last_split(req.num_layers, req.chunks)
    if first_last:
        rows.append(_describe(req, "first/last", planner.evaluate(req, first_last)))
    if explicit:
        rows.append(_describe(req, "given", planner.evaluate(req, planner.parse_layout(explicit, req.num_layers,
                                                                                     req.p))))
    return {"p": req.p, "v": req.v, "micro_batches": req.m, "timing": req.timing.source,
            # The bound enumerates no more splits than the plan did, so it never takes longer than planning.
            "lower_bound_s": planner.lower_bound(req, planner.EXHAUSTIVE_LIMIT), "plans": rows}


def _print_table(rep: dict) -> None:
    print(f"PP={rep['p']} VPP={rep['v']} micro-batches={rep['micro_batches']} costs: {rep['timing']}")
    print(f"lower bound {rep['lower_bound_s']:.4g} s")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        from vffn_pretrain.planning.calibrate import main as calibrate_main

        return calibrate_main(argv[1:])
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    from vffn_pretrain.config.run import load_run_config

    try:
        raw = compose_config(args.overrides)
        explicit = _stand_in_layout(raw)
        par = raw.parallel
        cfg = load_run_config(raw, world_size=par.tp * par.pp * par.cp * args.dp)
        req, _ = build_request(cfg, args)
        rep = report(req, explicit)
    except ConfigError as e:
        print(f"vffn-plan: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except planner.PlanError as e:
        print(f"vffn-plan: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        _print_table(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
