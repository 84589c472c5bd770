"""The pipeline simulator against megatron-core's own schedules, and planned against even layouts, measured there.

For every case of the grid (benchmarks/pipeline_grid.py: 354M and 7B, three FFN mixes, PP 2/4/8, VPP 1/2, m = 2
PP micro-batches; with VPP both `overlap_p2p_comm` settings) the planner plans the layout for the schedule the
case runs, and megatron-core's `get_forward_backward_func()` runs the planned layout and the even split (both
near-even splits, remainder first and last, where PP x VPP does not divide the layers) on gloo ranks whose chunks
sleep the planner's per-chunk costs (vffn_pretrain/testing/sleeping_pipeline.py). Costs are scaled so an average
chunk forward sleeps --op-ms milliseconds (per-op overheads of the schedule, a fraction of a millisecond, then
stay small); the hop is gloo's measured latency.

Prints per layout the predicted and measured step (median of the steps after the first), the error, whether every
rank's op order and P2P calls were exactly the simulator's program, and per case planned / even measured (against
the faster even split) and predicted. Targets: every error within 5%, every planned / even <= 1.01. The load is
printed with each case: timings of sleeping ranks barely depend on it, but rerun cases (--only) measured under a
heavy load.

    python benchmarks/pipeline_schedules.py [--quick] [--json] [--op-ms 40] [--steps 3] [--only REGEX]

--quick: 7B mixed at PP 2 and 4, VPP 1 and 2, both overlap settings, planned and even (what the suite checks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time

from pipeline_grid import Case, cases, items

from vffn_pretrain.planning import planner
from vffn_pretrain.planning.timing import Timing

QUICK = [Case("7b", "mixed", p, v, 2 * p) for p in (2, 4) for v in (1, 2)]


def load() -> float:
    return os.getloadavg()[0]


def scaled_timing(case: Case, op_s: float, hop: float) -> Timing:
    """Analytic H100 rates scaled so the even split's average chunk forward takes op_s; P2P is the measured hop."""
    analytic = Timing.analytic("H100")
    probe = planner.PlanRequest(items(case.model, case.mix), case.p, case.v, case.m, analytic)
    even = planner.evaluate(probe, planner.even_split(probe.num_layers, probe.chunks))
    scale = op_s / statistics.mean(even.chunk_forward)
    rate = analytic.forward["default"] * scale
    return Timing({"default": rate}, {"default": rate}, {}, 0.0, hop, f"analytic H100 x {scale:.3g}")


def layouts(req: planner.PlanRequest) -> dict[str, tuple[int, ...]]:
    """planned, and the even split (or both near-even ones)."""
    n, k = req.num_layers, req.chunks
    out = {"planned": planner.plan(req).split}
    if n % k == 0:
        out["even"] = planner.even_split(n, k)
    else:
        out["even (remainder last)"] = planner.even_split(n, k)
        out["even (remainder first)"] = planner.even_split(n, k, front=True)
    return out


def predict(plan: planner.Plan, case: Case, overlap: bool, hop: float, op: float) -> float:
    """The simulator's step for chunks that sleep the plan's costs, each op taking `op` seconds more."""
    from vffn_pretrain.planning.schedule import simulate

    return simulate([f + op for f in plan.chunk_forward], [b + op for b in plan.chunk_backward], case.p, case.m,
                    p2p=hop, overlap_p2p_comm=overlap).step_time


def run_case(pool, case: Case, overlap: bool, hop: float, op: float, args) -> dict:
    from vffn_pretrain.testing.sleeping_pipeline import measure

    req = planner.PlanRequest(items(case.model, case.mix), case.p, case.v, case.m,
                              scaled_timing(case, args.op_ms / 1000, hop), overlap_p2p_comm=overlap)
    t0 = time.process_time()
    splits = layouts(req)
    plan_cpu = time.process_time() - t0
    rows, load_before = {}, load()
    names = list(splits)
    for r in range(args.rounds):  # alternate the order: drift of the host affects both alike
        for name in (names if r % 2 == 0 else names[::-1]):
            same = next((other for other in names if other in rows and splits[other] == splits[name]
                         and other != name), None)
            if same is not None:  # the plan is an even split: one measurement serves both
                rows[name] = rows[same]
                continue
            plan = planner.evaluate(req, splits[name])
            got = measure(pool, plan.chunk_forward, plan.chunk_backward, case.v, case.m, overlap, args.steps)
            row = rows.setdefault(name, {"layout": plan.layout, "predicted_s": predict(plan, case, overlap, hop, op),
                                         "predicted_sleeps_only_s": plan.step_time, "measured": [],
                                         "calls_match": True, "mismatch": None})
            row["measured"].append(got["step_s"])
            row["calls_match"] &= got["calls_match"]
            row["mismatch"] = row["mismatch"] or got["mismatch"]
    for row in rows.values():
        row["measured_s"] = statistics.median(row["measured"])
        row["error"] = row["predicted_s"] / row["measured_s"] - 1
        row["error_sleeps_only"] = row["predicted_sleeps_only_s"] / row["measured_s"] - 1
    evens = [name for name in rows if name.startswith("even")]
    best_even = min(evens, key=lambda name: rows[name]["measured_s"])
    return {"case": case.name, "overlap_p2p_comm": overlap, "hop_s": hop, "op_s": op, "layouts": rows,
            "even": best_even,
            "planned_over_even_measured": rows["planned"]["measured_s"] / rows[best_even]["measured_s"],
            "planned_over_even_predicted": rows["planned"]["predicted_s"] / rows[best_even]["predicted_s"],
            "plan_cpu_s": plan_cpu, "load": [load_before, load()]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--op-ms", type=float, default=40.0, help="average chunk forward, milliseconds")
    ap.add_argument("--steps", type=int, default=3, help="steps per run (the first is not counted)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each layout, in alternating order")
    ap.add_argument("--only", help="a regular expression: run only the cases whose name matches")
    args = ap.parse_args(argv)
    problem = _bad_option(args)
    if problem:
        print(f"pipeline_schedules: {problem}", file=sys.stderr)
        return 2
    grid = QUICK if args.quick else cases((2,))
    if args.only:
        grid = [c for c in grid if re.search(args.only, c.name)]
    from vffn_pretrain.testing.rank_pool import RankPool
    from vffn_pretrain.testing.sleeping_pipeline import hop_seconds, op_seconds

    results, pools = [], {}
    try:
        pools = {2: RankPool(2)}
        op = op_seconds(pools[2])
        if not args.json:
            print(f"host cost of one schedule op (1F1B, PP 2, chunks sleeping 0 s): {op * 1e3:.2f} ms")
        hop = pools[2].run(hop_seconds)[0]
        for case in grid:
            if case.p not in pools:
                for pool in pools.values():
                    pool.close()
                pools = {case.p: RankPool(case.p)}
                hop = pools[case.p].run(hop_seconds)[0]
            for overlap in ((False, True) if case.v > 1 else (False,)):
                results.append(run_case(pools[case.p], case, overlap, hop, op, args))
                if not args.json:
                    _print_case(results[-1])
    except KeyboardInterrupt:
        print("pipeline_schedules: interrupted", file=sys.stderr)
        return 130
    finally:
        for pool in pools.values():
            pool.close()
    summary = _summary(results)
    if args.json:
        print(json.dumps({"cases": results, "summary": summary}, indent=1))
    else:
        print(f"\nworst |error| {summary['worst_abs_error']:.1%} ({summary['worst_error_case']}; with the sleeps "
              f"alone as the simulator's input {summary['worst_abs_error_sleeps_only']:.1%}); worst planned/even "
              f"measured {summary['worst_planned_over_even']:.3f} ({summary['worst_ratio_case']}); calls match "
              f"megatron's in every run: {summary['all_calls_match']}")
    return 0


def _bad_option(args) -> str | None:
    if not (math.isfinite(args.op_ms) and 1 <= args.op_ms <= 10_000):
        return f"--op-ms must be between 1 and 10000, got {args.op_ms}"
    if not 2 <= args.steps <= 100:
        return f"--steps must be between 2 and 100 (the first step is not counted), got {args.steps}"
    if not 1 <= args.rounds <= 100:
        return f"--rounds must be between 1 and 100, got {args.rounds}"
    if args.only is not None:
        try:
            re.compile(args.only)
        except re.error as e:
            return f"--only: {e}"
    return None


def _summary(results: list[dict]) -> dict:
    errors = [(abs(row["error"]), f"{r['case']} overlap={r['overlap_p2p_comm']} {name}")
              for r in results for name, row in r["layouts"].items()]
    raw = [abs(row["error_sleeps_only"]) for r in results for row in r["layouts"].values()]
    ratios = [(r["planned_over_even_measured"], f"{r['case']} overlap={r['overlap_p2p_comm']}") for r in results]
    worst_error, worst_ratio = max(errors, default=(0.0, "-")), max(ratios, default=(0.0, "-"))
    return {"worst_abs_error": worst_error[0], "worst_error_case": worst_error[1],
            "worst_abs_error_sleeps_only": max(raw, default=0.0), "worst_planned_over_even": worst_ratio[0], "worst_ratio_case": worst_ratio[1],
            "all_calls_match": all(row["calls_match"] for r in results for row in r["layouts"].values()),
            "cases": len(results)}


def _print_case(r: dict) -> None:
    print(f"\n{r['case']} overlap_p2p_comm={r['overlap_p2p_comm']} (load {r['load'][0]:.1f}-{r['load'][1]:.1f}, "
          f"plan {r['plan_cpu_s']:.2f} s CPU)")
    for name, row in r["layouts"].items():
        calls = "calls = megatron's" if row["calls_match"] else f"CALLS DIFFER {row['mismatch']}"
        print(f"  {name:<24} {row['layout']:<44} predicted {row['predicted_s']:7.3f} s  measured "
              f"{row['measured_s']:7.3f} s  error {row['error']:+6.1%} (sleeps only {row['error_sleeps_only']:+6.1%})"
              f"  {calls}")
    print(f"  planned / {r['even']}: measured {r['planned_over_even_measured']:.3f}, predicted "
          f"{r['planned_over_even_predicted']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
