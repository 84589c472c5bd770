"""Pipeline plans at paper scale and beyond, by simulation (no training): for 354M, 1.21B and 7B shapes at
PP = 2, 4, 8 with and without VPP, dense / versatile / mixed FFNs, the predicted step time and peak stage memory
of the even split (where legal), megatron's first/last-stage split (where legal) and the planner, and the planner's
ratio to the lower bound of `vffn_pretrain.planning.planner.lower_bound`.

Costs are analytic (H100 bf16 peak x 0.45, 100 GB/s P2P) unless --calibration is given; micro-batch 1 x 4096
tokens, --micro-batches per step (default 32), memory budget --memory-gib (default 80). Loop mixes: uniform (what
tau0 gives before training) or, with --skewed, a trained-like mix where recursion concentrates in the middle
layers. Prints a table; --json for machines.

    python benchmarks/pipeline_plan.py [--json] [--micro-batches 32] [--skewed]
"""

from __future__ import annotations

import argparse
import json
import time

from vffn_pretrain.model import counting
from vffn_pretrain.planning import costs, planner
from vffn_pretrain.planning.timing import Timing

SHAPES = {  # name: (layers, d, d_ff, heads), as in conf/model/*.yaml
    "354m": (15, 1024, 4096, 16),
    "1b2": (15, 2048, 8192, 16),
    "7b": (32, 4096, 11008, 32),
}


def ffn_pattern(kind: str, n: int) -> list[counting.FFNShape]:
    if kind == "mixed":  # dense in the first third, versatile after
        return [counting.FFNShape("dense")] * (n // 3) + [counting.FFNShape("versatile")] * (n - n // 3)
    return [counting.FFNShape(kind)] * n


def skewed_mix(layer: int, n: int) -> list[float]:
    """Deep recursion in the middle layers, shallow at both ends (the shape of the paper's Fig. 4)."""
    centre = 1.0 - abs(2.0 * layer / (n - 1) - 1.0)  # 0 at the ends, 1 in the middle
    weights = [1.0, 1.0 + centre, 1.0 + 3 * centre, 1.0 + 6 * centre]
    total = sum(weights)
    return [w / total for w in weights]


def run(args) -> list[dict]:
    timing = Timing.load(args.calibration) if args.calibration else Timing.analytic("H100")
    rows = []
    for name, (n, d, ff, heads) in SHAPES.items():
        shape = counting.ModelShape(n, d, ff, heads, None, 50304, 4096)
        step = costs.StepShape(1, 4096)
        for kind in ("dense", "versatile", "mixed"):
            ffns = ffn_pattern(kind, n)
            mixes = [skewed_mix(i, n) if f.kind == "versatile" and args.skewed else None for i, f in enumerate(ffns)]
            items = costs.model_items(shape, ffns, step, mixes)
            for p in (2, 4, 8):
                for v in (1, 2):
                    if p * v > n:
                        continue
                    req = planner.PlanRequest(items, p, v, args.micro_batches, timing, args.memory_gib * 2**30)
                    t0 = time.process_time()
                    try:
                        best = planner.plan(req)
                    except planner.PlanError as e:
                        rows.append({"model": name, "ffn": kind, "p": p, "v": v, "error": str(e)})
                        continue
                    cpu = time.process_time() - t0
                    lb = planner.lower_bound(req)
                    row = {"model": name, "ffn": kind, "p": p, "v": v, "planned_s": best.step_time,
                           "planned_gib": max(best.memory) / 2**30, "layout": best.layout,
                           "recompute": best.recompute, "lower_bound_s": lb, "ratio": best.step_time / lb,
                           "plan_cpu_s": cpu}
                    for label, split in (("even", planner.even_split(n, p * v) if n % (p * v) == 0 else None),
                                         ("first_last", planner.first_last_split(n, p * v))):
                        if split is not None:
                            plan = planner.evaluate(req, split)
                            row[f"{label}_s"] = plan.step_time if plan.feasible else None
                            row[f"{label}_gib"] = max(plan.memory) / 2**30
                    rows.append(row)
    return rows


def _fmt(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    return format(value, spec) if value is not None else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--micro-batches", type=int, default=32)
    ap.add_argument("--memory-gib", type=float, default=80.0)
    ap.add_argument("--skewed", action="store_true")
    ap.add_argument("--calibration")
    args = ap.parse_args()
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'model':>5} {'ffn':>9} {'PP':>2} {'VPP':>3} {'even s':>7} {'GiB':>5} {'f/l s':>7} {'GiB':>5} "
          f"{'plan s':>7} {'GiB':>5} {'plan/LB':>7} {'plan/even':>9}  layout")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:>5} {r['ffn']:>9} {r['p']:>2} {r['v']:>3}  {r['error']}")
            continue
        vs_even = f"{r['planned_s'] / r['even_s']:.3f}" if r.get("even_s") else "-"
        print(f"{r['model']:>5} {r['ffn']:>9} {r['p']:>2} {r['v']:>3} {_fmt(r, 'even_s', '7.3f')} "
              f"{_fmt(r, 'even_gib', '5.1f')} {_fmt(r, 'first_last_s', '7.3f')} {_fmt(r, 'first_last_gib', '5.1f')} "
              f"{r['planned_s']:7.3f} {r['planned_gib']:5.1f} {r['ratio']:7.3f} {vs_even:>9}  {r['layout']}"
              f"{'' if set(r['recompute']) == {'none'} else ' rc=' + ','.join(r['recompute'])}")


if __name__ == "__main__":
    main()
