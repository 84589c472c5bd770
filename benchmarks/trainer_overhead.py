"""What the trainer costs on top of a bare megatron-core loop.

Both run in this process on the same model, optimizer and batch shape (the main job's: tiny VersatileFFN,
global batch 16 x 128 tokens, micro-batch 8, fp32 on CPU):

- bare: `get_forward_backward_func` + `optimizer.step()` over one fixed batch, nothing else;
- trainer: `Trainer.fit()` with default logging (a line, a metrics.jsonl record and the FFN statistics every
  10 steps, wandb offline unless disabled, the per-step stop-signal check and NaN check, the data loader),
  timed between its first and last log record, so set-up, evaluation and the final checkpoint are excluded.

The two alternate in short rounds (bare, trainer, bare, trainer, ...) and the medians are compared, both in
process CPU time (robust to other load on a shared machine) and in wall time.

    python benchmarks/trainer_overhead.py [--steps 20] [--repeats 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="steps per measurement (a multiple of 10)")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--wandb", action="store_true", help="also log to wandb (offline) as the default config does")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    from functools import partial

    from hydra import compose, initialize_config_dir
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from vffn_pretrain.config.paths import CONF_DIR
    from vffn_pretrain.config.run import load_run_config
    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.training.callbacks.base import Callback
    from vffn_pretrain.training.step import forward_step
    from vffn_pretrain.training.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix="vffn-overhead-")
    total = args.repeats * (args.steps + 10) + 20  # the data is sized for the steps the trainer will run
    overrides = [f"run_dir={run_dir}", f"train.max_steps={total}", "train.eval_iters=0",
                 f"checkpoint.interval={10 * total}", f"logging.wandb.enabled={str(args.wandb).lower()}",
                 "logging.progress_bar=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = load_run_config(compose("config", overrides=overrides), world_size=1)
    trainer = Trainer(cfg)
    trainer.setup()
    t = cfg.train

    class LogTimes(Callback):
        def __init__(self):
            self.times = []

        def on_log(self, record):
            self.times.append((record["step"], time.perf_counter(), time.process_time()))

    log_times = LogTimes()
    trainer.callbacks.callbacks.append(log_times)
    trainer.save = lambda: None  # the final checkpoint is outside the timed window anyway
    if trainer.wandb is not None:
        trainer.wandb.on_train_end = lambda summary: None  # fit() runs once per round: keep the run open

    fixed = trainer._micro_batches(trainer.train_iter, 0)
    fb = get_forward_backward_func()

    tokens_per_step = t.global_batch_size * t.seq_length

    def bare(steps: int) -> tuple[float, float]:
        """(tokens per CPU second, tokens per wall second)"""
        start, cpu = time.perf_counter(), time.process_time()
        for step in range(steps):
            ffn_state.set_training_step(trainer.ddp, step, t.max_steps)
            for chunk in trainer.ddp:
                chunk.zero_grad_buffer()
            trainer.optimizer.zero_grad()
            fb(forward_step_func=partial(forward_step, noise_seed=t.seed), data_iterator=iter(fixed),
               model=trainer.ddp[0], num_microbatches=len(fixed), seq_length=t.seq_length,
               micro_batch_size=t.micro_batch_size, decoder_seq_length=t.seq_length, forward_only=False)
            trainer.optimizer.step()
        tokens = steps * tokens_per_step
        return tokens / (time.process_time() - cpu), tokens / (time.perf_counter() - start)

    def trained(steps: int) -> tuple[float, float]:
        log_times.times.clear()
        t.max_steps = trainer.step + steps + 10  # +10: the first log record opens the timed window
        trainer.fit()
        (s0, w0, c0), (s1, w1, c1) = log_times.times[0], log_times.times[-1]
        tokens = (s1 - s0) * tokens_per_step
        return tokens / (c1 - c0), tokens / (w1 - w0)

    bare(10)  # warm-up
    bare_tps, trainer_tps = [], []
    for _ in range(args.repeats):
        bare_tps.append(bare(args.steps))
        trainer_tps.append(trained(args.steps))
    med = statistics.median
    b_cpu, b_wall = med(x[0] for x in bare_tps), med(x[1] for x in bare_tps)
    t_cpu, t_wall = med(x[0] for x in trainer_tps), med(x[1] for x in trainer_tps)
    # Best-of rounds: on a shared machine other load only ever slows a round down.
    b_best, t_best = max(x[0] for x in bare_tps), max(x[0] for x in trainer_tps)
    result = {
        "steps_per_measurement": args.steps,
        "repeats": args.repeats,
        "bare_tokens_per_cpu_sec": b_cpu,
        "trainer_tokens_per_cpu_sec": t_cpu,
        "trainer_overhead_cpu": 1 - t_cpu / b_cpu,
        "bare_tokens_per_sec": b_wall,
        "trainer_tokens_per_sec": t_wall,
        "trainer_overhead_wall": 1 - t_wall / b_wall,
        "bare_tokens_per_cpu_sec_best": b_best,
        "trainer_tokens_per_cpu_sec_best": t_best,
        "trainer_overhead_cpu_best": 1 - t_best / b_best,
        "bare_all": bare_tps,
        "trainer_all": trainer_tps,
        "wandb": args.wandb,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'loop':<10}{'tokens/CPU-s':>14}{'ratio':>8}{'tokens/s (wall)':>18}{'ratio':>8}")
    print(f"{'bare':<10}{b_cpu:>14.0f}{1.0:>8.3f}{b_wall:>18.0f}{1.0:>8.3f}")
    print(f"{'trainer':<10}{t_cpu:>14.0f}{t_cpu / b_cpu:>8.3f}{t_wall:>18.0f}{t_wall / b_wall:>8.3f}")
    print(f"{'best-of':<10}{'bare':>6}{b_best:>8.0f}{'trainer':>10}{t_best:>8.0f}{t_best / b_best:>8.3f}")
    print(f"trainer overhead: {100 * (1 - t_cpu / b_cpu):.1f}% CPU time (median), "
          f"{100 * (1 - t_best / b_best):.1f}% (best rounds), {100 * (1 - t_wall / b_wall):.1f}% wall (median); "
          "target <= 5%")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
