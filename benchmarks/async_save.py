"""Training time lost per checkpoint save: `checkpoint.async_save=true` against a synchronous save.

For each model (the tiny main job, and the 354m shape with a short sequence so that a CPU step takes seconds) the
real trainer is set up once in this process and both kinds of save are made from it, side by side in interleaved
rounds (sync, async, async, sync, ...), each into its own directory through its own checkpoint manager:

- synchronous: the time `save` blocks is the save's whole time (the files are written and fsync'ed);
- async: the blocking time is the staging (plan, common state, fork of the writer), the per-step checks while
  the write is in flight and its finalisation (metadata, rename, `latest`, pruning); training steps go on while
  the writer writes, and their step time is set against the steps of the same round with no write in flight.

"lost" is what a save costs the run: the blocking time, plus (async) the extra time of the steps that overlapped
the write. The first save of each kind in a process is reported apart: it also starts megatron-core's helper
processes. One intra-op thread (`--threads`), fp32, on CPU; times are wall-clock medians over the rounds, with
the trainer process's CPU time beside the blocking time (other load on the machine slows wall time, not CPU time).

    python benchmarks/async_save.py [--models tiny 354m] [--rounds 3] [--json] [--quick]

--quick: the tiny model at a small batch, one round (the test suite runs it). The target (issue 27): async
blocking time <= 15% of the synchronous save's time at the 354m shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

MODELS = {
    # The main job: tiny VersatileFFN, global batch 16 x 128 tokens.
    "tiny": ["model=tiny", "ffn=versatile"],
    # The 354m shape (about 0.4 B parameters with the optimizer's two moments: about 4.6 GB per checkpoint), at a
    # sequence and batch that keep a CPU step to seconds.
    "354m": ["model=354m", "ffn=versatile", "train.seq_length=32", "train.micro_batch_size=1",
             "train.global_batch_size=1"],
}
# --quick: the tiny model at a small batch, for the test suite.
QUICK = ["train.seq_length=64", "train.micro_batch_size=2", "train.global_batch_size=4"]
TARGET = 0.15


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _trainer(model: str, run_dir: Path, steps: int, extra: list[str]):
    from hydra import compose, initialize_config_dir

    from vffn_pretrain.config.paths import CONF_DIR
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.training.trainer import Trainer

    overrides = [*MODELS[model], *extra, f"run_dir={run_dir}", f"train.max_steps={steps}", "train.eval_iters=0",
                 "checkpoint.interval=1000000000", "logging.wandb.enabled=false", "logging.progress_bar=false",
                 "checkpoint.keep=1"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = load_run_config(compose("config", overrides=overrides), world_size=1)
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.callbacks.callbacks = []  # no console or metrics records: the benchmark prints its own table
    return trainer


class Bench:
    """Saves of one kind from `trainer` into `root`, with the training steps around them."""

    def __init__(self, trainer, root: Path, background: bool, max_overlap_steps: int):
        from vffn_pretrain.training.checkpointing import CheckpointManager

        self.trainer, self.background, self.max_overlap_steps = trainer, background, max_overlap_steps
        self.saved = []
        self.ckpt = CheckpointManager(root, keep=1, async_save=background, on_saved=self.saved.append)

    def step(self) -> float:
        start = time.perf_counter()
        self.trainer.train_one_step()
        return time.perf_counter() - start

    def round(self, idle_steps: int) -> dict:
        """`idle_steps` steps with nothing in flight, a save, and (async) the steps until the write is done."""
        trainer = self.trainer
        idle = [self.step() for _ in range(idle_steps)]
        self.saved.clear()
        trainer.ckpt = self.ckpt
        cpu = time.process_time()
        trainer.save()
        staged_cpu = time.process_time() - cpu
        overlapped = []
        while self.ckpt.writing() is not None and len(overlapped) < self.max_overlap_steps:
            overlapped.append(self.step())
            cpu = time.process_time()
            self.ckpt.poll()
            staged_cpu += time.process_time() - cpu
        cpu = time.process_time()
        self.ckpt.wait()  # only if the write outlasted max_overlap_steps
        staged_cpu += time.process_time() - cpu
        (saved,) = self.saved
        lost = saved.blocking_s
        if overlapped:
            lost += sum(overlapped) - len(overlapped) * statistics.median(idle)
        return {"blocking_s": saved.blocking_s, "blocking_cpu_s": staged_cpu, "write_s": saved.write_s,
                "idle_step_s": statistics.median(idle), "overlap_steps": len(overlapped),
                "overlap_step_s": statistics.median(overlapped) if overlapped else None, "lost_s": lost}


def measure(model: str, rounds: int, idle_steps: int, max_overlap_steps: int, workdir: Path,
            extra: list[str]) -> dict:
    from megatron.core import parallel_state as ps

    steps_needed = (rounds + 1) * 2 * (idle_steps + max_overlap_steps) + 10
    trainer = _trainer(model, workdir / f"{model}-run", steps_needed, extra)
    try:
        sync = Bench(trainer, workdir / f"{model}-sync", False, max_overlap_steps)
        background = Bench(trainer, workdir / f"{model}-async", True, max_overlap_steps)
        first = {"sync": sync.round(1), "async": background.round(1)}  # starts megatron's helper processes
        rows = {"sync": [], "async": []}
        for r in range(rounds):
            order = (sync, background) if r % 2 == 0 else (background, sync)
            for bench in order:
                rows["async" if bench.background else "sync"].append(bench.round(idle_steps))
    finally:
        ps.destroy_model_parallel()
    med = statistics.median
    out = {"model": model, "params": trainer.info["params_total"], "rounds": rounds, "first_save": first}
    for kind, rs in rows.items():
        out[kind] = {key: (med(r[key] for r in rs) if all(r[key] is not None for r in rs) else None)
                     for key in rs[0]}
        out[kind]["all"] = rs
    out["blocking_ratio"] = out["async"]["blocking_s"] / out["sync"]["blocking_s"]
    out["lost_ratio"] = out["async"]["lost_s"] / out["sync"]["lost_s"]
    out["checkpoint_gb"] = sum(f.stat().st_size for f in (workdir / f"{model}-sync").rglob("*") if f.is_file()) / 1e9
    return out


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[dict], load_before: str, load_after: str) -> None:
    print(f"checkpoint saves, sync vs checkpoint.async_save=true (CPU, fp32, 1 intra-op thread); medians; "
          f"{load_before} before, {load_after} after")
    head = (f"{'model':<6}{'ckpt GB':>8} {'mode':<6}{'blocking s':>11}{'CPU s':>7}{'x sync':>7}{'write s':>8}"
            f"{'step s':>8}{'overlap step s':>15}{'steps':>6}{'lost s':>8}{'x sync':>7}")
    print(head)
    for res in results:
        for kind in ("sync", "async"):
            r = res[kind]
            ratio = res["blocking_ratio"] if kind == "async" else 1.0
            lost = res["lost_ratio"] if kind == "async" else 1.0
            print(f"{res['model']:<6}{res['checkpoint_gb']:>8.2f} {kind:<6}{r['blocking_s']:>11.3f}"
                  f"{r['blocking_cpu_s']:>7.2f}{ratio:>7.3f}{_fmt(r['write_s']):>8}{r['idle_step_s']:>8.2f}"
                  f"{_fmt(r['overlap_step_s']):>15}{r['overlap_steps']:>6}{r['lost_s']:>8.3f}{lost:>7.3f}")
        f = res["first_save"]
        print(f"{'':<6}{'':>8} first save in the process: sync {f['sync']['blocking_s']:.2f} s, async blocking "
              f"{f['async']['blocking_s']:.2f} s (helper processes start)")
    for res in results:
        if res["model"] == "354m":
            verdict = "met" if res["blocking_ratio"] <= TARGET else "NOT met"
            print(f"target: async blocking <= {TARGET:.0%} of a synchronous save at 354m: "
                  f"{res['blocking_ratio']:.1%} ({verdict})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "354m"])
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per kind of save (after a first one)")
    p.add_argument("--idle-steps", type=int, default=2, help="steps with no write in flight per round")
    p.add_argument("--max-overlap-steps", type=int, default=20, help="steps a write may overlap before waiting")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--workdir", default=None, help="where the checkpoints go (default: a temporary directory)")
    p.add_argument("--quick", action="store_true", help="the tiny model at a small batch, one round")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.idle_steps = ["tiny"], 1, 1
    for name in ("rounds", "idle_steps", "max_overlap_steps", "threads"):
        if getattr(args, name) < 1:
            print(f"async_save: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}",
                  file=sys.stderr)
            return 2
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="vffn-async-save-", dir=args.workdir))
    load_before = _load()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's set-up lines: stdout is the report's
            results = [measure(m, args.rounds, args.idle_steps, args.max_overlap_steps, workdir,
                               QUICK if args.quick else []) for m in args.models]
    except KeyboardInterrupt:
        print("async_save: interrupted; no report", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = _load()
    if args.json:
        print(json.dumps({"load_before": load_before, "load_after": load_after, "results": results}, indent=2))
    else:
        print_table(results, load_before, load_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
