"""How close the planner's search comes to the best split, and how long it takes, on the validation grid.

For every case of benchmarks/pipeline_grid.py (354M and 7B, three FFN mixes, PP 2/4/8, VPP 1/2, m = PP, 2 PP and
8 PP; with VPP both `overlap_p2p_comm` settings) the planner plans (its CPU and wall seconds are reported). Where
it simulated every split it is exact by construction. Elsewhere an independent search written here, random
restarts of a first-improvement descent over single-layer moves between any two chunks, gets --seconds of CPU
per case from random starts only (it never sees the planner's answer); the table gives planned / best found. Both
score splits with the same simulator (the objective), so the comparison is about the search alone.
Target: planned / best <= 1.01 everywhere.

    python benchmarks/pipeline_search.py [--json] [--seconds 30] [--only REGEX]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time

import numpy as np
from pipeline_grid import cases, items

from vffn_pretrain.planning import planner
from vffn_pretrain.planning.timing import Timing


def random_restarts(req: planner.PlanRequest, seconds: float, seed: int = 12345) -> tuple[tuple[int, ...], float, int]:
    """(best split, its step time, restarts done) of random-restart first-improvement descent in `seconds` of CPU."""
    rng = random.Random(seed)
    ev = planner._Costs(req)
    n, k = req.num_layers, req.chunks
    best, best_t, restarts = None, math.inf, 0
    deadline = time.process_time() + seconds

    def score(split) -> float:
        return float(ev.scores(planner._cuts_of([split]))[0])

    while time.process_time() < deadline:
        split = planner.random_split(n, k, rng)
        t = score(split)
        improved = True
        while improved and time.process_time() < deadline:
            improved = False
            moves = [(a, b) for a in range(k) for b in range(k) if a != b and split[a] > 1]
            rng.shuffle(moves)
            cands = []
            for a, b in moves:
                s = list(split)
                s[a] -= 1
                s[b] += 1
                cands.append(tuple(s))
            scores = ev.scores(planner._cuts_of(cands)) if cands else np.array([])
            for cand, t_cand in zip(cands, scores):  # the first improving move, in random order
                if t_cand < t * (1 - 1e-12):
                    split, t, improved = cand, float(t_cand), True
                    break
        restarts += 1
        if t < best_t:
            best, best_t = split, t
    return best, best_t, restarts


def run(args) -> list[dict]:
    rows = []
    grid = [c for c in cases((1, 2, 8)) if not args.only or re.search(args.only, c.name)]
    for case in grid:
        for overlap in ((False, True) if case.v > 1 else (False,)):
            req = planner.PlanRequest(items(case.model, case.mix), case.p, case.v, case.m, Timing.analytic("H100"),
                                      overlap_p2p_comm=overlap)
            wall, cpu = time.perf_counter(), time.process_time()
            plan = planner.plan(req)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            splits = planner.count_splits(req.num_layers, req.chunks)
            exhaustive = splits * 2 * req.chunks * req.m <= planner.EXHAUSTIVE_WORK
            row = {"case": case.name, "overlap_p2p_comm": overlap, "splits": splits, "exhaustive": exhaustive,
                   "planned": plan.layout, "planned_s": plan.step_time, "plan_cpu_s": cpu, "plan_wall_s": wall,
                   "load": os.getloadavg()[0]}
            if not exhaustive:
                best, best_t, restarts = random_restarts(req, args.seconds)
                row.update(best=planner.layout_string(best), best_s=best_t, restarts=restarts,
                           planned_over_best=plan.step_time / best_t)
            rows.append(row)
            if not args.json:
                _print_row(row)
    return rows


def _print_row(r: dict) -> None:
    check = "exhaustive" if r["exhaustive"] else (f"planned/best {r['planned_over_best']:.4f} "
                                                  f"({r['restarts']} restarts)")
    print(f"{r['case']:<22} overlap={str(r['overlap_p2p_comm']):<5} splits {r['splits']:>10}  plan "
          f"{r['plan_cpu_s']:6.2f} s CPU {r['plan_wall_s']:6.2f} s wall  {check}  (load {r['load']:.1f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU seconds of the independent search per case")
    ap.add_argument("--only", help="a regular expression: only the cases whose name matches")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.seconds) and 0 < args.seconds <= 3600):
        print(f"pipeline_search: --seconds must be in (0, 3600], got {args.seconds}", file=sys.stderr)
        return 2
    rows = run(args)
    checked = [r for r in rows if not r["exhaustive"]]
    summary = {"cases": len(rows), "searched": len(checked),
               "worst_planned_over_best": max((r["planned_over_best"] for r in checked), default=1.0),
               "max_plan_cpu_s": max(r["plan_cpu_s"] for r in rows),
               "max_plan_wall_s": max(r["plan_wall_s"] for r in rows)}
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=1))
    else:
        print(f"\n{summary['cases']} cases, {summary['searched']} beyond exhaustive: worst planned/best "
              f"{summary['worst_planned_over_best']:.4f}; slowest plan {summary['max_plan_cpu_s']:.2f} s CPU, "
              f"{summary['max_plan_wall_s']:.2f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
