"""Check a GPU in one command: environment, correctness, layer speed, training throughput/MFU, exact resume.

    python benchmarks/gpu_check.py [--out gpu-check] [--json] [--quick] [--layers 15] [--timeout STEP=SECONDS]
                                   [--only STEP ...]

Run it from the checkout on the node (after `pip install --no-index --find-links .gpu-wheels -e .`). The steps
run in this order, each in its own process under its own time limit, so a step that fails, hangs or runs out
of GPU memory reports that and the next step still runs:

1. environment: GPU, torch / CUDA versions, megatron-core's HAVE_TE and the backend the trainer picks, the peak
   the MFU is measured against;
2. correctness: one FFN layer of every kind against the float64 reference (vffn_pretrain/testing/), fp32 and
   bf16, training (output and every gradient) and eval; with ffn.token_sparse_recursion on and off where
   FFNConfig has that key. Each row's tolerance follows the format its matrix products really ran in (fp32,
   TF32 or bf16; ffn_device_check.py);
3. layer speed: benchmarks/ffn_layer.py in bf16 (time and FLOP ratios to dense, eval early exit, peak memory);
4. training throughput: the real trainer on the 354m shape, dense and versatile, bf16, sequence 4096, the first
   micro-batch of (4, 2, 1) that fits (then shorter sequences): median tokens/s, TFLOP/s and MFU over the steps
   after warm-up, peak memory. The FLOPs are the model's real arithmetic (all L_max loops and the width path
   for versatile), so for versatile the "MFU" is its hardware-FLOP utilisation;
5. resume: `vffn-pretrain` (the tiny model, system.deterministic=true) for 6 steps, then 3 steps, exit, and
   resume to 6; the losses of steps 4-6 must be bitwise equal. If they are not, the uninterrupted run is repeated:
   if it repeats itself bitwise, the resume changed the run (failed); if not (kernels without a deterministic
   form here), the resumed losses must be within RESUME_TOLERANCE (relative) of the uninterrupted ones. The
   step's time limit grows with the first launch's measured time (room for three more launches), up to
   MAX_STEP_SECONDS.

It writes gpu_check.md (a table per step) and gpu_check.json to --out, each step's log beside them, and exits
0 when every step passed, 1 otherwise. --quick runs the same steps at toy sizes (the CPU test suite runs it).
The time limits add up to 8 minutes (the resume step may ask for more, see 5.); --timeout STEP=SECONDS sets
one (SECONDS a positive number; then it is not extended). Bad flags
(an unknown step, a limit that is not a positive number, --layers outside 1..1000, an --out that is a file or
that another check is writing: OUT.lock) are one line and exit 2. Each step runs in a process group of
its own; stopping the runner (Ctrl-C, SIGTERM, SIGHUP: one line, exit 130, no report) kills that group, and a step whose
runner was killed outright (kill -9) kills its own group, so no step or trainer process outlives the check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# (step, time limit in seconds on a GPU, with --quick)
STEPS = [("environment", 45, 120), ("correctness", 75, 180), ("layer_speed", 75, 120),
         ("throughput", 195, 240), ("resume", 120, 240)]
MAX_STEP_SECONDS = 900  # the most a step may extend its own time limit to (`request_budget`)
RESUME_LAUNCHES_AFTER_FIRST = 3  # the split run, its resume, and a repeat of the straight run if not bitwise
# |resumed loss - uninterrupted loss| / |loss| accepted when the kernels are not deterministic (two uninterrupted
# runs differ): run-to-run noise of atomics is ~1e-5 here; a resume that loses the data position, the optimizer
# moments or the schedule moves these losses by 1e-2 and more.
RESUME_TOLERANCE = 1e-3
BREAK_ENV = "VFFN_GPU_CHECK_BREAK"  # a step name: that step raises at its start (the tests break one on purpose)
# A step name: that step waits on a subprocess that prints nothing and never ends, as a stuck trainer would (the
# tests stop the runner then).
HANG_ENV = "VFFN_GPU_CHECK_HANG"


# ---------------------------------------------------------------------------------------------------- steps
def step_environment(args) -> dict:
    import megatron.core
    import torch
    from megatron.core.extensions import transformer_engine as te_ext

    from vffn_pretrain.model.backend import select_backend
    from vffn_pretrain.training.throughput import device_peak_flops

    cuda = torch.cuda.is_available()
    peak_info = device_peak_flops()
    name, peak = peak_info.device, peak_info.flops
    info = {
        "device": name, "part": peak_info.part, "mfu_peak": peak_info.describe(),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "megatron_core": megatron.core.__version__, "HAVE_TE": bool(te_ext.HAVE_TE),
        "backend": select_backend("auto").name, "peak_bf16_tflops": None if peak is None else peak / 1e12,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpus=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    summary = (f"{name}, torch {info['torch']}, CUDA {info['cuda']}, backend {info['backend']} "
               f"(HAVE_TE={info['HAVE_TE']}), peak {info['peak_bf16_tflops'] or 'unknown'} TFLOP/s bf16")
    if cuda and info["backend"] != "te":
        summary += ("; WARNING: no working transformer-engine, so this node trains (and this check tests) "
                    "megatron's local modules, SDPA and torch AdamW, not the transformer-engine path")
    return {"ok": True, "summary": summary, "info": info}


def step_correctness(args) -> dict:
    import torch
    from ffn_layer import build_block
    from megatron.core import parallel_state as ps

    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import init_distributed, setup_model_parallel
    from vffn_pretrain.testing.ffn_device_check import compare, variants

    init_distributed()
    setup_model_parallel(ParallelConfig())
    rows = []
    for kind, kw in variants():
        for dtype in (torch.float32, torch.bfloat16):
            for training in (True, False):
                row = {"kind": kind, "options": {k: v for k, v in kw.items() if k != "balance_coeff"},
                       "dtype": str(dtype).removeprefix("torch."), "mode": "train" if training else "eval"}
                try:
                    row.update(compare(build_block, kind, kw, dtype=dtype, training=training))
                except Exception as e:  # noqa: BLE001 - one case's crash is that case's result
                    row.update(ok=False, error=f"{type(e).__name__}: {e}")
                rows.append(row)
    ps.destroy_model_parallel()
    bad = [r for r in rows if not r["ok"]]
    summary = f"{len(rows) - len(bad)}/{len(rows)} cases within tolerance"
    if bad:
        summary += "; failing: " + ", ".join(f"{r['kind']} {r['dtype']} {r['mode']}" for r in bad[:6])
    return {"ok": not bad, "summary": summary, "rows": rows}


def step_layer_speed(args) -> dict:
    import ffn_layer

    size = (["--d", "64", "--d-ff", "256", "--seq", "32", "--batch", "2", "--rounds", "1", "--warmup", "0"]
            if args.quick else ["--d", "1024", "--d-ff", "4096", "--seq", "4096", "--batch", "2", "--rounds", "10",
                                "--warmup", "2", "--dtype", "bf16"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ffn_layer.main([*size, "--json"])
    result = json.loads(printed.getvalue())
    by_name = {r["name"]: r for r in result["rows"]}
    v, ve = by_name["versatile"], by_name["versatile eval"]
    summary = (f"versatile train {v['time_ratio']:.2f}x dense time for {v['flop_ratio']:.2f}x FLOPs "
               f"(time/FLOP {v['time_per_flop']:.2f}); eval {ve['time_ratio']:.2f}x for {ve['flop_ratio']:.2f}x")
    sparse = {r["mix"]: r for r in result.get("token_sparse", []) if r["variant"] == "sparse"}
    if sparse:
        summary += "; token-sparse vs all-token " + ", ".join(
            f"{mix} {r['speedup']:.2f}x (theory {r['theory_speedup']:.2f}x)" for mix, r in sparse.items())
    return {"ok": True, "summary": summary, "shape": result["shape"], "rows": result["rows"],
            "token_sparse": result.get("token_sparse", [])}


def _train_overrides(run_dir: Path, quick: bool) -> list[str]:
    base = [f"run_dir={run_dir}", "logging.wandb.enabled=false", "logging.progress_bar=false", "logging.interval=1"]
    if quick:  # the tiny model, few tokens
        base += ["train.seq_length=64", "train.micro_batch_size=2", "train.global_batch_size=4"]
    return base


def _throughput_run(kind: str, seq: int, micro: int, args, run_dir: Path) -> dict:
    """One training run in this process; the median of the per-step records after warm-up."""
    import torch
    from hydra import compose, initialize_config_dir
    from megatron.core import parallel_state as ps

    from vffn_pretrain.config.paths import CONF_DIR
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.training.trainer import Trainer

    warmup, measured = (1, 2) if args.quick else (5, 15)
    overrides = [*_train_overrides(run_dir, args.quick), f"ffn={kind}", "train.eval_iters=0",
                 f"train.max_steps={warmup + measured}", "checkpoint.interval=1000000000"]
    if not args.quick:
        overrides += ["model=354m", f"model.num_layers={args.layers}", f"train.seq_length={seq}",
                      f"train.micro_batch_size={micro}", f"train.global_batch_size={2 * micro}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = load_run_config(compose("config", overrides=overrides), world_size=1)
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        trainer.save = lambda: None  # a throughput run keeps no checkpoint
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.fit()
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    finally:
        ps.destroy_model_parallel()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if "tokens_per_sec" in r and r["step"] > warmup]
    mfu = [r["mfu"] for r in steady if isinstance(r["mfu"], float)]
    return {
        "kind": kind, "layers": cfg.model.num_layers, "seq_length": cfg.train.seq_length,
        "micro_batch": cfg.train.micro_batch_size, "global_batch": cfg.train.global_batch_size,
        "steps_measured": len(steady), "backend": cfg.system.backend,
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in steady),
        "tflops_per_device": statistics.median(r["tflops_per_device"] for r in steady),
        "mfu": statistics.median(mfu) if mfu else "unknown",
        "flops_per_token": trainer.flops.train, "peak_memory_gib": peak,
        "loss_last": steady[-1]["loss"],
    }


def step_throughput(args) -> dict:
    import gc

    import torch

    shapes = [(4096, 4), (4096, 2), (4096, 1), (2048, 1), (1024, 1)]  # the first that fits
    rows = []
    for kind in ("dense", "versatile"):
        for seq, micro in shapes[:1] if args.quick else shapes:
            gc.collect()  # the previous run's model and optimizer (outside any except block, so really gone)
            torch.cuda.empty_cache()
            try:
                rows.append(_throughput_run(kind, seq, micro, args, args.out / f"throughput-{kind}-{seq}-{micro}"))
                break
            except torch.cuda.OutOfMemoryError:
                print(f"{kind}: out of memory at seq {seq} micro-batch {micro}; trying smaller", flush=True)
        else:
            rows.append({"kind": kind, "error": "out of memory at every shape tried"})
    ok = [r for r in rows if "error" not in r]

    def pct(x):
        return f"{100 * x:.1f}%" if isinstance(x, float) else str(x)

    summary = "; ".join(
        f"{r['kind']}: {r['tokens_per_sec']:.0f} tok/s, {r['tflops_per_device']:.1f} TFLOP/s, "
        f"{'MFU' if r['kind'] == 'dense' else 'HFU'} {pct(r['mfu'])}" for r in ok)
    if ok:
        summary += f" ({ok[0]['layers']} layers, seq {ok[0]['seq_length']}, micro-batch {ok[0]['micro_batch']})"
    return {"ok": len(ok) == len(rows), "summary": summary or "no run finished", "rows": rows}


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def _vffn_pretrain(args, run_dir: Path, *extra: str) -> float:
    """One trainer launch (deterministic kernels); returns its wall seconds."""
    cmd = [sys.executable, "-m", "vffn_pretrain.train", *_train_overrides(run_dir, args.quick),
           "train.max_steps=6", "train.eval_iters=0", "system.deterministic=true", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-4000:], flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} ... {' '.join(extra)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def request_budget(args, step: str, seconds_from_start: float) -> None:
    """Ask the runner to let this step run `seconds_from_start` in all (it extends the step's default limit up
    to MAX_STEP_SECONDS; an explicit --timeout is kept)."""
    path = args.out / f"step-{step}.budget"
    path.with_suffix(".tmp").write_text(f"{seconds_from_start:.1f}\n")
    os.replace(path.with_suffix(".tmp"), path)


def step_resume(args) -> dict:
    start = time.perf_counter()
    straight, resumed = args.out / "resume-straight", args.out / "resume-split"
    launches = [_vffn_pretrain(args, straight)]
    budget = time.perf_counter() - start + RESUME_LAUNCHES_AFTER_FIRST * 1.5 * launches[0] + 30
    request_budget(args, "resume", budget)
    launches.append(_vffn_pretrain(args, resumed, "train.exit_interval=3"))
    launches.append(_vffn_pretrain(args, resumed))

    def repeat() -> dict[int, float]:
        again = args.out / "resume-straight-again"
        launches.append(_vffn_pretrain(args, again))
        return _losses(again)

    return {**resume_verdict(_losses(straight), _losses(resumed), repeat),
            "launch_seconds": launches, "budget_s": budget}


def resume_verdict(straight: dict[int, float], resumed: dict[int, float], repeat) -> dict:
    """The resume step's verdict from the losses {step: loss} of the uninterrupted and the resumed run: bitwise
    equal passes; otherwise `repeat()` (the uninterrupted run's losses once more) decides: a run that repeats
    itself bitwise was changed by the resume (failed); one that does not (kernels without a deterministic form)
    passes within RESUME_TOLERANCE (relative)."""
    steps = sorted(straight)
    if sorted(resumed) != steps:
        return {"ok": False, "summary": f"resumed run logged steps {sorted(resumed)}, straight run {steps}"}
    diff = max(abs(straight[s] - resumed[s]) for s in steps)
    result = {"losses_straight": [straight[s] for s in steps], "losses_resumed": [resumed[s] for s in steps],
              "max_abs_diff": diff, "bitwise": diff == 0.0}
    if diff == 0.0:
        return {"ok": True, "summary": f"losses of steps {steps[0]}-{steps[-1]} bitwise equal after resume at 3",
                **result}
    again = repeat()
    noise = max(abs(straight[s] - again.get(s, float("nan"))) for s in steps)
    if noise == 0.0:  # the run repeats itself exactly, so the resume is what changed it
        return {"ok": False, "run_to_run_diff": 0.0, **result,
                "summary": f"resume changed the run: max |loss diff| {diff:.3g}, while two uninterrupted runs are "
                           "bitwise equal"}
    relative = max(abs(straight[s] - resumed[s]) / max(abs(straight[s]), 1e-12) for s in steps)
    ok = relative <= RESUME_TOLERANCE
    return {"ok": ok, "run_to_run_diff": noise, "max_relative_diff": relative, **result,
            "summary": f"not bitwise (kernels not deterministic here: two uninterrupted runs differ by {noise:.3g}); "
                       f"resumed losses within {relative:.3g} relative, {'within' if ok else 'beyond'} the "
                       f"tolerance {RESUME_TOLERANCE:g}"}


STEP_FUNCS = {"environment": step_environment, "correctness": step_correctness, "layer_speed": step_layer_speed,
              "throughput": step_throughput, "resume": step_resume}


# ---------------------------------------------------------------------------------------------------- runner
def run_child(args) -> int:
    """Run one step in this process and write its result to OUT/step-NAME.json."""
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE))
    sys.path.insert(1, str(ROOT))
    from vffn_pretrain.process.lifetime import exit_with_parent

    # A runner killed with kill -9 cannot stop this step (it leads its own process group): the step takes its
    # group, the trainer processes it started included, down with it.
    exit_with_parent(take_group=True)
    name = args.step
    path = args.out / f"step-{name}.json"
    start = time.perf_counter()
    try:
        if os.environ.get(BREAK_ENV) == name:
            raise RuntimeError(f"broken on purpose ({BREAK_ENV}={name})")
        if os.environ.get(HANG_ENV) == name:
            subprocess.run([sys.executable, "-c", "import time; time.sleep(3600)"])
        result = STEP_FUNCS[name](args)
    except Exception as e:  # noqa: BLE001 - the step's failure is its result
        import traceback

        traceback.print_exc()
        result = {"ok": False, "summary": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"}
    result["seconds"] = time.perf_counter() - start
    path.write_text(json.dumps(result, indent=1, default=str))
    return 0


def run_step(name: str, limit: float, args, extendable: bool = True) -> dict:
    """Run step `name` in its own process group within `limit` seconds, which the step may extend up to
    MAX_STEP_SECONDS (`request_budget`) when `extendable`."""
    log = args.out / f"step-{name}.log"
    result_path = args.out / f"step-{name}.json"
    budget_path = args.out / f"step-{name}.budget"
    for stale in (result_path, budget_path):
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--out", str(args.out),
           "--layers", str(args.layers)] + (["--quick"] if args.quick else [])
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            overran = wait_within(proc, limit, budget_path if extendable else None)
            if overran is not None:
                return {"ok": False, "status": "timeout", "seconds": time.perf_counter() - start,
                        "summary": f"no result within its {overran:g} s limit (log: {log.name})"}
        finally:
            # Timed out, or this runner is stopping (Ctrl-C, SIGTERM: see main): the step and anything it
            # started go too. A group already gone is fine.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if not result_path.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return {"ok": False, "status": "failed", "seconds": time.perf_counter() - start,
                "summary": f"exited {proc.returncode} without a result: {tail[0][:200]}"}
    result = json.loads(result_path.read_text())
    result["status"] = "ok" if result["ok"] else "failed"
    return result


def wait_within(proc: subprocess.Popen, limit: float, budget_path: Path | None) -> float | None:
    """Wait for `proc` for `limit` seconds, extended to what the step asks for in `budget_path` (up to
    MAX_STEP_SECONDS; None: no extension). Returns None once it exited, or the limit it overran."""
    start = time.perf_counter()
    while True:
        if budget_path is not None:
            limit = max(limit, min(_requested_budget(budget_path), MAX_STEP_SECONDS))
        left = limit - (time.perf_counter() - start)
        if left <= 0:
            return limit
        try:
            proc.wait(timeout=min(left, 1.0))
            return None
        except subprocess.TimeoutExpired:
            continue


def _requested_budget(path: Path) -> float:
    """The seconds a step asked for (`request_budget`), 0 if none (or unreadable: a partial write is retried)."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return 0.0


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({'quick' if report['quick'] else 'full'}) on {report['device']}", "",
             "| # | step | status | seconds | result |", "|---|---|---|---|---|"]
    for i, (name, r) in enumerate(report["steps"].items(), 1):
        lines.append(f"| {i} | {name} | {r['status']} | {r['seconds']:.0f} | {r['summary']} |")
    corr = report["steps"]["correctness"].get("rows")
    if corr:
        lines += ["", "## Correctness (||layer - float64 reference|| / ||reference||, worst tensor)", "",
                  "| kind | options | dtype | products in | mode | max error | limit | within limits |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in corr:
            err = f"{r['max_error']:.2e}" if "max_error" in r else r.get("error", "")
            limit = f"{max(r['limits'].values()):.1e}" if r.get("limits") else ""
            lines.append(f"| {r['kind']} | {r['options'] or ''} | {r['dtype']} | {r.get('precision', '')} | "
                         f"{r['mode']} | {err} | {limit} | "
                         f"{'yes' if r['ok'] else 'NO ' + ', '.join(r.get('failed', []))} |")
    speed = report["steps"]["layer_speed"].get("rows")
    if speed:
        lines += ["", "## Layer speed (benchmarks/ffn_layer.py, ratios to dense)", "",
                  "| layer | mode | ms | time x | FLOP x | time/FLOP | peak MB | mem x |", "|---|---|---|---|---|---|---|---|"]
        for r in speed:
            mem = "-" if r["mem_mb"] is None else f"{r['mem_mb']:.0f}"
            memx = "-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"
            lines.append(f"| {r['name']} | {r['mode']} | {r['ms']:.2f} | {r['time_ratio']:.2f} | "
                         f"{r['flop_ratio']:.2f} | {r['time_per_flop']:.2f} | {mem} | {memx} |")
    thr = report["steps"]["throughput"].get("rows")
    if thr:
        lines += ["", "## Training throughput (MFU for dense; hardware-FLOP utilisation for versatile)", "",
                  "| kind | layers | seq | micro | tokens/s | TFLOP/s | MFU/HFU | peak GiB |", "|---|---|---|---|---|---|---|---|"]
        for r in thr:
            if "error" in r:
                lines.append(f"| {r['kind']} | {r['error']} | | | | | | |")
                continue
            util = f"{100 * r['mfu']:.1f}%" if isinstance(r["mfu"], float) else r["mfu"]
            mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
            lines.append(f"| {r['kind']} | {r['layers']} | {r['seq_length']} | {r['micro_batch']} | "
                         f"{r['tokens_per_sec']:.0f} | {r['tflops_per_device']:.2f} | {util} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for the report and logs")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the Markdown")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a CPU test of the script)")
    parser.add_argument("--layers", type=int, default=15, help="layers of the 354m shape in the throughput step")
    parser.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                        help="change one step's time limit")
    parser.add_argument("--only", action="append", choices=[name for name, _, _ in STEPS],
                        help="run only this step (repeatable); the others are reported as skipped")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.step:
        return run_child(args)
    try:
        limits, explicit = check_flags(args)
        lock = claim_out(args.out)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    from vffn_pretrain.process.interrupts import interruptible

    try:
        # SIGTERM (a job's time limit, a test's timeout) and SIGHUP stop the check like Ctrl-C, through run_step's
        # clean-up: one line, exit 130, as every tool.
        with interruptible():
            return run_steps(args, limits, explicit)
    finally:
        lock.release()


def check_flags(args) -> tuple[dict[str, float], set[str]]:
    """The step time limits and the steps whose limit --timeout set; ValueError (one line naming the flag) for a bad --timeout, --layers or --out."""
    import math

    limits = {name: quick if args.quick else gpu for name, gpu, quick in STEPS}
    explicit = set()
    for item in args.timeout:
        name, eq, seconds = item.partition("=")
        if name not in limits:
            raise ValueError(f"--timeout {item}: no step named {name!r} (steps: {', '.join(limits)})")
        try:
            limit = float(seconds) if eq else math.nan
        except ValueError:
            limit = math.nan
        if not (math.isfinite(limit) and limit > 0):
            raise ValueError(f"--timeout {item}: expected STEP=SECONDS with SECONDS a positive number")
        limits[name] = limit
        explicit.add(name)
    if not 1 <= args.layers <= 1000:
        raise ValueError(f"--layers must be between 1 and 1000, got {args.layers}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a directory")
    return limits, explicit


def claim_out(out: Path):
    """Make --out and take its lock (a second check writing the same folder is refused); ValueError when it
    cannot be made or is in use."""
    sys.path.insert(1, str(ROOT))
    from vffn_pretrain.outputs.lock import OutputInUse, claim_output

    try:
        lock = claim_output(out, "--out", "gpu_check")
        out.mkdir(exist_ok=True)
    except OutputInUse as e:
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"--out {out}: cannot be made ({e.strerror or e})") from None
    return lock


def run_steps(args, limits: dict[str, float], explicit: set[str]) -> int:
    steps = {}
    for name, _, _ in STEPS:
        if args.only and name not in args.only:
            steps[name] = {"ok": True, "status": "skipped", "seconds": 0.0, "summary": "not asked for (--only)"}
            continue
        try:
            steps[name] = run_step(name, limits[name], args, extendable=name not in explicit)
        except KeyboardInterrupt as stop:
            from vffn_pretrain.process.interrupts import interrupted

            print(f"gpu_check: {interrupted(stop)} during step {name}; its processes were stopped, no report written",
                  file=sys.stderr)
            return 130
        print(f"{name}: {steps[name]['status']} ({steps[name]['seconds']:.0f} s) {steps[name]['summary']}",
              file=sys.stderr, flush=True)
    device = steps["environment"].get("info", {}).get("device", "unknown device")
    report = {"quick": args.quick, "device": device, "steps": steps}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(json.dumps(report, indent=1, default=str) if args.json else markdown(report))
    return 0 if all(r["ok"] for r in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
