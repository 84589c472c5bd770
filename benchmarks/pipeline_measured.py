"""The pipeline simulator against measured CPU step times, and a planned layout against the even split.

Two studies on this machine, each rank a gloo process with one thread:

1. **Prediction**: `vffn-plan calibrate` measures the config's rates, then for PP = 2 and PP = 4, an even and a
   skewed layout, the trainer runs (`vffn-pretrain` under torchrun) and its measured step time (from
   metrics.jsonl windows after a warm-up) is set against `vffn-plan`'s prediction for that layout. The ranks
   share this machine's cores: the calibration also measures how much k ranks training at once slow each other
   (`--shared-ranks`, k up to the largest PP), and the prediction simulates with it (`--shared-cores`).
2. **Planning**: a heterogeneous model (dense layers first, VersatileFFN after) at PP = 2: the planner's layout
   and the even split run in interleaved rounds; the table gives each round's step times and the speed-up.

    python benchmarks/pipeline_measured.py [--json] [--steps 10] [--rounds 3] [--study both] [--quick]

--quick runs one case of each study with a few steps (what the test suite checks). Prints tables; --json for
machines. Timings need a quiet machine: check `uptime` first; the load is printed with the results, and with
each prediction round the host's own speed drift over that case (`core_seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GLOBAL_BATCH, SEQ_LENGTH = 16, 128
MODEL = ["model=tiny", "model.num_layers=8", "train.micro_batch_size=2", f"train.global_batch_size={GLOBAL_BATCH}",
         f"train.seq_length={SEQ_LENGTH}"]
MIXED = ["ffn.layers='dense*4,versatile*4'"]
QUIET = ["train.eval_interval=100000", "checkpoint.interval=100000", "logging.wandb.enabled=false",
         "logging.interval=2", "logging.stats_interval=100000", "logging.progress_bar=false"]
PREDICTION_CASES = [  # (pp, name, layout)
    (2, "even", "Etttt|ttttL"),
    (2, "skewed", "Etttttt|ttL"),
    (4, "even", "Ett|tt|tt|ttL"),
    (4, "skewed", "Etttt|tt|t|tL"),
]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calibrate(overrides: list[str], out: Path, rounds: int, shared_ranks: int, sharing_seconds: float,
              p2p: bool = True) -> dict:
    """Runs `vffn-plan calibrate` into `out`; returns its measured sharing slowdown {ranks: factor}."""
    cmd = [sys.executable, "-m", "vffn_pretrain.planning.cli", "calibrate", "--out", str(out), "--rounds",
           str(rounds), f"--shared-ranks={shared_ranks}", f"--sharing-seconds={sharing_seconds}", *overrides,
           *([] if p2p else ["--no-p2p"])]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"vffn-plan calibrate failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout)["measured"].get("shared_slowdown", {})


def predict(overrides: list[str], pp: int, layout: str | None, calibration: Path) -> dict:
    """vffn-plan's rows for this layout ("given") and its own plan ("planned")."""
    cores = os.cpu_count() or 1
    cmd = [sys.executable, "-m", "vffn_pretrain.planning.cli", "--json", "--calibration", str(calibration),
           *overrides, f"parallel.pp={pp}"]
    if layout:
        cmd.append(f"parallel.pipeline_layout={layout}")
    cmd.append(f"--shared-cores={cores}")
    out = subprocess.run(cmd, env=_env(), check=True, capture_output=True, text=True)
    return {row["name"]: row for row in json.loads(out.stdout)["plans"]}


def measure(overrides: list[str], pp: int, layout: str, steps: int, warmup: int) -> list[float]:
    """Step seconds of each metrics.jsonl window after `warmup` steps of a real trainer run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={pp}",
               f"--master-port={_free_port()}", "-m", "vffn_pretrain.train", *overrides, *QUIET,
               f"parallel.pp={pp}", f"parallel.pipeline_layout={layout}", f"train.max_steps={steps}",
               f"run_dir={tmp}/run"]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"trainer failed ({done.returncode}): {done.stderr[-2000:]}")
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    tokens = GLOBAL_BATCH * SEQ_LENGTH
    return [tokens / r["tokens_per_sec"] for r in records if "tokens_per_sec" in r and r["step"] > warmup]


def core_seconds() -> list[float]:
    """Seconds a fixed pure-Python loop takes on each core this process may use (best of three, pinned to the
    core in turn). Compared before a case's calibration and after its measurement, the ratio says how far the
    host's own speed moved in between, which no calibration can follow: on the 2-vCPU development machine the
    cores differ by 10-30% and their speed moves within minutes."""
    def loop_seconds() -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            sum(i * i for i in range(2_000_000))
            best = min(best, time.perf_counter() - start)
        return best

    if not hasattr(os, "sched_setaffinity"):  # not Linux: one unpinned figure
        return [loop_seconds()]
    cores = sorted(os.sched_getaffinity(0))
    out = []
    try:
        for core in cores:
            os.sched_setaffinity(0, {core})
            out.append(loop_seconds())
    finally:
        os.sched_setaffinity(0, cores)
    return out


def host_drift(before: list[float], after: list[float]) -> float:
    """The largest relative change of any core's loop time (0.1: some core got 10% faster or slower)."""
    return max(abs(a / b - 1) for a, b in zip(after, before))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prediction_study(args, workdir: Path) -> dict:
    """The sharing table is measured once (a ratio of interleaved phases, robust to drift); the layer rates are
    measured again just before each case, because this machine's own speed drifts by 10% and more over minutes
    (a fixed matmul loop, timed every second, varies 0.154-0.197 s), and a calibration minutes old carries that
    drift into the error. Each round runs the cases in turn, alternating their order."""
    base = workdir / "versatile.json"
    cases = PREDICTION_CASES[:1] if args.quick else PREDICTION_CASES
    slowdown = calibrate(MODEL, base, args.calib_rounds, max(pp for pp, _, _ in cases), args.sharing_seconds)
    rows = {layout: {"pp": pp, "layout_name": name, "layout": layout, "rounds": []} for pp, name, layout in cases}
    for r in range(1 if args.quick else args.prediction_rounds):
        for pp, name, layout in (cases if r % 2 == 0 else cases[::-1]):
            speed_before = core_seconds()
            cal = base if args.quick else workdir / f"case-{pp}-{name}.json"
            if not args.quick:
                calibrate(MODEL, cal, args.calib_rounds, 0, args.sharing_seconds)
                data = json.loads(cal.read_text())
                data["shared_slowdown"] = json.loads(base.read_text())["shared_slowdown"]
                cal.write_text(json.dumps(data))
            predicted = predict(MODEL, pp, layout, cal)["given"]["step_time_s"]
            measured = statistics.median(measure(MODEL, pp, layout, args.steps, args.warmup))
            rows[layout]["rounds"].append({"predicted_s": predicted, "measured_s": measured,
                                          "error": predicted / measured - 1, "load": load(),
                                          "host_drift": host_drift(speed_before, core_seconds())})
    for row in rows.values():
        row["error"] = statistics.median(x["error"] for x in row["rounds"])
        row["predicted_s"] = statistics.median(x["predicted_s"] for x in row["rounds"])
        row["measured_s"] = statistics.median(x["measured_s"] for x in row["rounds"])
        row["load"] = row["rounds"][-1]["load"]
    return {"shared_slowdown": slowdown, "rows": list(rows.values())}


def planning_study(args, workdir: Path) -> dict:
    overrides = MODEL + MIXED
    cal = workdir / "mixed.json"
    # --quick checks the study's plumbing; the prediction study has already exercised the P2P and sharing
    # measurements, so its planning calibration skips them (about 20 s of the test suite).
    calibrate(overrides, cal, args.calib_rounds, 0 if args.quick else 2, args.sharing_seconds, p2p=not args.quick)
    plans = predict(overrides, 2, None, cal)
    planned, even = plans["planned"]["layout"], plans["even"]["layout"]
    rounds = []
    for r in range(1 if args.quick else args.rounds):
        order = [("planned", planned), ("even", even)] if r % 2 == 0 else [("even", even), ("planned", planned)]
        times = {name: statistics.median(measure(overrides, 2, layout, args.steps, args.warmup))
                 for name, layout in order}
        rounds.append({**times, "speedup": times["even"] / times["planned"], "load": load()})
    return {"planned_layout": planned, "even_layout": even,
            "predicted_planned_s": plans["planned"]["step_time_s"], "predicted_even_s": plans["even"]["step_time_s"],
            "rounds": rounds, "median_speedup": statistics.median(r["speedup"] for r in rounds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="planning study rounds")
    ap.add_argument("--prediction-rounds", type=int, default=2)
    ap.add_argument("--calib-rounds", type=int, default=7)
    ap.add_argument("--sharing-seconds", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--study", choices=("prediction", "planning", "both"), default="both")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.calib_rounds, args.sharing_seconds = 4, 2, 2, 0.5
    problem = _bad_option(args)
    if problem:
        print(f"pipeline_measured: {problem}", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = {"cores": os.cpu_count(), "load_before": load()}
            if args.study in ("prediction", "both"):
                result["prediction"] = prediction_study(args, Path(tmp))
            if args.study in ("planning", "both"):
                result["planning"] = planning_study(args, Path(tmp))
    except KeyboardInterrupt:  # subprocess.run has already killed the command it was waiting for
        print("pipeline_measured: interrupted; no report", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"load before: {result['load_before']} ({result['cores']} cores)")
    if "prediction" in result:
        _print_prediction(result["prediction"])
    if "planning" in result:
        _print_planning(result["planning"])
    return 0


def _bad_option(args) -> str | None:
    """One line naming the first option no study can run with, or None."""
    if args.warmup < 0:
        return f"--warmup must be at least 0, got {args.warmup}"
    if args.steps < args.warmup + 2:  # metrics.jsonl windows are 2 steps: at least one after the warm-up
        return f"--steps must be at least --warmup + 2 = {args.warmup + 2}, got {args.steps}"
    for flag in ("rounds", "prediction_rounds", "calib_rounds"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}"
    if not 0 < args.sharing_seconds < float("inf"):
        return f"--sharing-seconds must be a positive number of seconds, got {args.sharing_seconds}"
    return None


def _print_prediction(pred: dict) -> None:
    print("measured sharing slowdown (k ranks training at once): "
          + ", ".join(f"{k}: {x:.2f}x" for k, x in pred["shared_slowdown"].items()))
    print(f"\n{'PP':>3} {'layout':>16} {'predicted s':>12} {'measured s':>11} {'error':>7}  each round's error")
    for row in pred["rows"]:
        each = " ".join(f"{x['error']:+.1%} (load {x['load'].split()[0]}, host drift {x['host_drift']:.0%})"
                        for x in row["rounds"])
        print(f"{row['pp']:>3} {row['layout']:>16} {row['predicted_s']:>12.3f} {row['measured_s']:>11.3f} "
              f"{row['error']:>+7.1%}  {each}")


def _print_planning(plan: dict) -> None:
    print(f"\nmixed model PP=2: planned {plan['planned_layout']} (predicted {plan['predicted_planned_s']:.3f} s) "
          f"vs even {plan['even_layout']} (predicted {plan['predicted_even_s']:.3f} s)")
    print(f"{'round':>5} {'planned s':>10} {'even s':>8} {'speed-up':>9}  load")
    for i, r in enumerate(plan["rounds"]):
        print(f"{i:>5} {r['planned']:>10.3f} {r['even']:>8.3f} {r['speedup']:>9.3f}  {r['load']}")
    print(f"median speed-up of the planned layout: {plan['median_speedup']:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
