"""Where the test suite's CPU goes: every Python process it starts, by kind and by the test that started it.

    python benchmarks/suite_census.py run [--jobs 2] [--log FILE] [-- PYTEST_ARGS ...]
    python benchmarks/suite_census.py report FILE [--top 30] [--json]

`run` runs the suite as `make test` does (pytest-xdist, `--dist loadscope`, not the `slow` tests, one OpenMP
thread) with `benchmarks/suite_census_hook` first on PYTHONPATH: its `sitecustomize` makes every Python process
record its own CPU time, argv and the test that started it when it exits (processes killed by a signal, and
processes of tests that set PYTHONPATH themselves, are missed). It prints the wall and CPU time of the whole
suite, then the report. `report` reads such a log: CPU by kind of process (the pytest workers, the rank pools'
gloo ranks and other multiprocessing children, trainer subprocesses, tool subprocesses, torchrun), and the tests
whose processes used the most CPU. A pool started by one test and reused by later ones counts for the first.

The suite's own budget (about 25 minutes on 2 cores) is wall time; this says which processes to make cheaper.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).resolve().parent / "suite_census_hook"

TOOLS = ("vffn-data", "vffn-export", "vffn-eval", "vffn-study", "vffn-plan", "vffn-scaling", "vffn-info",
         "vffn-generate", "data_tools", "vffn_pretrain.export", "vffn_pretrain.evaluation", "vffn_pretrain.study",
         "vffn_pretrain.planning", "vffn_pretrain.scaling", "vffn_pretrain.info", "vffn_pretrain.generate")


def kind(record: dict) -> str:
    """The kind of a recorded process, from its argv."""
    # `python -m pkg.mod` leaves the module's file in argv[0]: pkg/mod.py reads as pkg.mod.py
    argv = " ".join(str(a) for a in record.get("argv") or []).replace("/", ".")
    if record.get("multiprocessing_child"):
        return "multiprocessing child (rank pools, data workers)"
    if "torch.distributed.run" in argv or "torchrun" in argv:
        return "torchrun"
    if "vffn_pretrain.train" in argv or "vffn-pretrain" in argv or "record_exit" in argv:
        return "trainer subprocess"
    if any(tool in argv for tool in TOOLS):
        return "tool subprocess"
    if record.get("test"):  # started while a test ran (the workers themselves exit between tests)
        return "other Python process"
    return "pytest and its workers"


def report(records: list[dict], top: int) -> dict:
    by_kind: dict[str, list[float]] = defaultdict(list)
    by_test: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_kind[kind(r)].append(r["cpu_s"])
        test = (r.get("test") or "").rsplit(" ", 1)[0] or "(none: session set-up or a worker)"
        by_test[test].append(r["cpu_s"])
    total = sum(r["cpu_s"] for r in records)
    kinds = sorted(({"kind": k, "processes": len(v), "cpu_min": sum(v) / 60} for k, v in by_kind.items()),
                   key=lambda row: -row["cpu_min"])
    tests = sorted(({"test": k, "processes": len(v), "cpu_s": sum(v)} for k, v in by_test.items()),
                   key=lambda row: -row["cpu_s"])[:top]
    return {"processes": len(records), "cpu_min": total / 60, "kinds": kinds, "tests": tests}


def print_report(rep: dict) -> None:
    print(f"{rep['processes']} Python processes, {rep['cpu_min']:.1f} CPU-minutes recorded")
    print(f"\n{'kind':<52} {'processes':>9} {'CPU min':>8} {'share':>6}")
    for row in rep["kinds"]:
        print(f"{row['kind']:<52} {row['processes']:>9} {row['cpu_min']:>8.1f} "
              f"{row['cpu_min'] / max(rep['cpu_min'], 1e-9):>6.0%}")
    print(f"\n{'test (processes it started)':<100} {'procs':>5} {'CPU s':>7}")
    for row in rep["tests"]:
        print(f"{row['test'][:100]:<100} {row['processes']:>5} {row['cpu_s']:>7.1f}")


def read_log(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut off by a process killed while writing it
    return records


def run(args) -> int:
    log = Path(args.log or tempfile.mkstemp(prefix="suite-census-", suffix=".jsonl")[1])
    log.write_text("")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VFFN_CENSUS_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(HOOK), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", str(args.jobs), "--dist", "loadscope", "-m", "not slow",
           "-p", "no:cacheprovider", *args.pytest_args]
    t0 = time.perf_counter()
    status = subprocess.call(cmd, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nsuite: exit {status}, {wall / 60:.1f} min wall, {(children.ru_utime + children.ru_stime) / 60:.1f} "
          f"CPU-minutes (all descendants that were waited for); load average now {os.getloadavg()[0]:.1f}; "
          f"log {log}\n")
    rep = report(read_log(log), args.top)
    print(json.dumps(rep, indent=1) if args.json else "", end="")
    if not args.json:
        print_report(rep)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the suite with the census hook, then report")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--log", default=None, help="where the processes record themselves [a temporary file]")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (a subset of the tests)")
    p = sub.add_parser("report", help="report on a log of an earlier run")
    p.add_argument("log")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    try:
        rep = report(read_log(Path(args.log)), args.top)
    except OSError as e:
        print(f"suite_census: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print_report(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
