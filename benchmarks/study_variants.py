"""Training-step and evaluation cost of each study variant at the study's size, side by side in one process.

    python benchmarks/study_variants.py [--study conf/study/table1_cpu.yaml] [--variants dense,kloop4,versatile]
                                        [--steps 5] [--rounds 5] [--profile] [--json]

Each variant is built from the study file (its shared `overrides` and the variant's `variant_overrides`), with a
vocabulary of 8192 (the study corpus's) and random tokens. A round runs `--steps` optimizer steps of every
variant in turn (megatron's forward-backward schedule and the optimizer step, as the trainer does), then one
evaluation batch of each (eval mode, forward only); rounds interleave the variants, so a change in machine load
hits them alike. Reported per variant: process CPU time per training step and per evaluation batch (median over
rounds; one thread), its ratio to dense, the trainer's FLOPs per token relative to dense, and time/FLOP (the
time ratio over the FLOP ratio: above 1, the variant pays for more than its arithmetic).

`--profile` then runs torch's profiler over `--steps` training steps of each variant and prints the operators
with the most self CPU time, side by side: where the time goes beyond the matmuls.

`--estimate` adds the study's duration from these per-step costs: every planned run's steps plus its
evaluations, at `jobs` runs at a time (a quiet-machine estimate; a shared machine is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 8192


def _variant_overrides(study, variant: str) -> list[str]:
    return [*study.overrides, *study.overrides_of(variant), f"model.vocab_size={VOCAB}", f"data.tokenizer=null:{VOCAB}"]


class Variant:
    """One variant's model, optimizer and fixed batches."""

    def __init__(self, name: str, overrides: list[str]):
        from hydra import compose, initialize_config_dir

        from vffn_pretrain.config.paths import CONF_DIR
        from vffn_pretrain.config.run import load_run_config
        from vffn_pretrain.model.gpt import build_model
        from vffn_pretrain.model.shapes import counting_shapes
        from vffn_pretrain.parallel.init import seed_all
        from vffn_pretrain.testing.batches import split_global_batch, synthetic_global_batch
        from vffn_pretrain.training.flops import RunFlops
        from vffn_pretrain.training.lr import build_scheduler
        from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = load_run_config(compose("config", overrides=[*overrides, "run_dir=/tmp/vffn-bench-unused"]),
                                  world_size=1)
        self.name, self.cfg = name, cfg
        t = cfg.train
        seed_all(t.seed)
        self.chunks = build_model(cfg.model, cfg.ffn, cfg.parallel, init_seed=t.seed)
        self.ddp = wrap_ddp(self.chunks, cfg.parallel)
        self.optimizer = build_optimizer(self.ddp, OptimConfig.from_train(t), cfg.parallel, bf16=False)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.flops = RunFlops.for_run(cfg, counting_shapes(cfg.model, cfg.ffn, tp=1, seq_length=t.seq_length),
                                      "cpu").train
        self.batches = [split_global_batch(synthetic_global_batch(7, s, t.global_batch_size, t.seq_length, VOCAB),
                                           step=s, dp_rank=0, dp_size=1, micro_batch_size=t.micro_batch_size)
                        for s in range(4)]
        self.step = 0
        self.train_s: list[float] = []
        self.eval_s: list[float] = []

    def train_steps(self, n: int) -> float:
        """CPU seconds per step over n optimizer steps."""
        from vffn_pretrain.model.ffn import state as ffn_state
        from vffn_pretrain.training.step import train_step

        t = self.cfg.train
        cpu = time.process_time()
        for _ in range(n):
            ffn_state.set_training_step(self.ddp, self.step, t.max_steps)
            train_step(self.ddp, self.optimizer, self.batches[self.step % 4], seq_length=t.seq_length,
                       micro_batch_size=t.micro_batch_size, noise_seed=t.seed)
            self.scheduler.step(increment=1)
            self.step += 1
        return (time.process_time() - cpu) / n

    def eval_batch(self) -> float:
        """CPU seconds of one evaluation batch (eval mode, forward only)."""
        import torch

        from vffn_pretrain.training.step import train_step

        t = self.cfg.train
        for c in self.ddp:
            c.eval()
        cpu = time.process_time()
        with torch.no_grad():
            train_step(self.ddp, self.optimizer, self.batches[0], seq_length=t.seq_length,
                       micro_batch_size=t.micro_batch_size, forward_only=True)
        for c in self.ddp:
            c.train()
        return time.process_time() - cpu


def profile(variants: list[Variant], steps: int, top: int = 14) -> dict[str, list[tuple[str, float]]]:
    """{variant: [(operator, self CPU ms per step), ...]} of the `top` operators, from torch's profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    for v in variants:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            v.train_steps(steps)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out[v.name] = [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in rows]
    return out


def estimate(study, per_step: dict[str, float], per_eval: dict[str, float]) -> dict:
    """Hours for the study's plan at `study.jobs` runs at a time, from CPU seconds per step / eval batch."""
    import dataclasses

    from vffn_pretrain.study.plan import make_plan

    t_eval = {}
    runs = []
    for run in make_plan(dataclasses.replace(study, corpus_dir=None), "/tmp/vffn-bench-plan"):
        v = run.variant
        if v not in per_step:
            return {"missing": v}
        o = dict(x.split("=", 1) for x in run.overrides if "=" in x)
        interval = int(o.get("train.eval_interval", 100))
        iters = int(o.get("train.eval_iters", 4))
        passes = 2 if o.get("train.eval_train_mode") == "true" and _adaptive(v, study) else 1
        evals = run.steps // interval + 1 + (o.get("train.eval_at_start") == "true")
        t_eval[run.name] = evals * iters * passes * per_eval[v]
        runs.append((run, run.steps * per_step[v] + t_eval[run.name] + 10.0))  # + start-up
    total = sum(s for _, s in runs)
    # Greedy list schedule in plan order (bases first), `jobs` at a time: a lower bound on the wall time.
    slots = [0.0] * study.jobs
    for _, s in runs:
        i = slots.index(min(slots))
        slots[i] += s
    return {"runs": len(runs), "cpu_hours": total / 3600, "wall_hours_at_jobs": max(slots) / 3600,
            "eval_share": sum(t_eval.values()) / total}


def _adaptive(variant: str, study) -> bool:
    from vffn_pretrain.model.kinds import traits

    return traits(study.kind_of(variant)).adaptive_depth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=str(REPO / "conf/study/table1_cpu.yaml"))
    p.add_argument("--variants", default=None, help="comma-separated [every variant of the study]")
    p.add_argument("--steps", type=int, default=5, help="training steps per variant and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="also print the top operators per variant")
    p.add_argument("--estimate", action="store_true", help="also estimate the whole study's duration")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import init_distributed, setup_model_parallel
    from vffn_pretrain.study.config import load_study

    study = load_study(args.study)
    names = args.variants.split(",") if args.variants else list(dict.fromkeys(["dense", *study.variant_names()]))
    init_distributed()
    setup_model_parallel(ParallelConfig())
    variants = [Variant(n, _variant_overrides(study, n)) for n in names]
    load = os.getloadavg()
    for v in variants:  # warm-up
        v.train_steps(2)
        v.eval_batch()
    for _ in range(args.rounds):
        for v in variants:
            v.train_s.append(v.train_steps(args.steps))
            v.eval_s.append(v.eval_batch())
    med = statistics.median
    dense = next((v for v in variants if v.name == "dense"), variants[0])
    rows = []
    for v in variants:
        ratio = med(v.train_s) / med(dense.train_s)
        flop_ratio = v.flops / dense.flops
        rows.append({"variant": v.name, "train_ms_per_step": 1e3 * med(v.train_s), "train_ratio": ratio,
                     "eval_ms_per_batch": 1e3 * med(v.eval_s), "eval_ratio": med(v.eval_s) / med(dense.eval_s),
                     "flops_ratio_train": flop_ratio, "time_per_flop": ratio / flop_ratio})
    result = {"study": args.study, "load_before": load, "load_after": os.getloadavg(), "rows": rows}
    if args.profile:
        result["profile"] = profile(variants, args.steps)
    if args.estimate:
        result["estimate"] = estimate(study, {v.name: med(v.train_s) for v in variants},
                                      {v.name: med(v.eval_s) for v in variants})
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"study {args.study}; load {load[0]:.1f} before, {result['load_after'][0]:.1f} after; "
          f"{args.rounds} rounds of {args.steps} steps; CPU time, 1 thread")
    print(f"{'variant':<18}{'train ms/step':>14}{'x dense':>9}{'FLOPs x':>9}{'time/FLOP':>11}"
          f"{'eval ms/batch':>15}{'x dense':>9}")
    for r in rows:
        print(f"{r['variant']:<18}{r['train_ms_per_step']:>14.1f}{r['train_ratio']:>9.2f}"
              f"{r['flops_ratio_train']:>9.2f}{r['time_per_flop']:>11.2f}{r['eval_ms_per_batch']:>15.1f}"
              f"{r['eval_ratio']:>9.2f}")
    if args.profile:
        for name, ops in result["profile"].items():
            print(f"\n{name}: top operators by self CPU time (ms per step)")
            for op, ms in ops:
                print(f"  {ms:8.2f}  {op}")
    if args.estimate:
        e = result["estimate"]
        print(f"\nestimate: {e}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
