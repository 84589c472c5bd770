"""The end-of-run summary: run_dir/summary.json (rank 0) and the last thing the callbacks see.

Fields (sweeps and vffn-scaling read them): variant, model, params_total, params_non_embedding,
flops_per_token_train, flops_per_token_eval, flops_per_token_executed, mfu_peak, eval_loop_mix, tokens, steps,
final_train_loss, final_val_loss, final_val_ppl, final_val_loss_train_mode (with train.eval_train_mode), wall_time_s, exit_code, checkpoint, metrics, wandb, and
unigram_entropy when the training data could be sampled.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from vffn_pretrain.model.kinds import traits
from vffn_pretrain.training.callbacks.metrics_file import json_safe

log = logging.getLogger(__name__)


def variant_name(ffn) -> str:
    """The FFN variant as sweeps name it: k-loop variants differ by k (kloop4), the others by kind."""
    return f"{ffn.kind}{ffn.loops}" if traits(ffn.kind).fixed_loops else ffn.kind


def run_summary(cfg, *, info: dict, flops_eval: float, eval_loop_mix: list[float] | None, steps: int,
                tokens: int, final_train_loss: float | None, final_val_loss: float | None,
                final_val_loss_train_mode: float | None = None, wall_time_s: float, exit_code: int,
                checkpoint: Path | None, wandb_files: str | None) -> dict:
    """The summary of the run `cfg` (a RunConfig); `info` is what the callbacks got at the start. `tokens`: the
    training tokens consumed (counted step by step: a resume with another train.seq_length keeps it right)."""
    return {
        "variant": variant_name(cfg.ffn),
        "model": cfg.model.name,
        "params_total": info["params_total"],
        "params_non_embedding": info["params_non_embedding"],
        "flops_per_token_train": info["flops_per_token_train"],
        "flops_per_token_eval": flops_eval,
        "flops_per_token_executed": info["flops_per_token_executed"],
        "mfu_peak": info["mfu_peak"],
        "eval_loop_mix": eval_loop_mix,
        "tokens": tokens,
        "steps": steps,
        "final_train_loss": final_train_loss,
        "final_val_loss": final_val_loss,
        "final_val_ppl": math.exp(min(final_val_loss, 50.0)) if final_val_loss is not None
        and not math.isnan(final_val_loss) else None,
        "final_val_loss_train_mode": final_val_loss_train_mode,
        "wall_time_s": wall_time_s,
        "exit_code": exit_code,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "metrics": str(cfg.run_dir / "metrics.jsonl"),
        "wandb": wandb_files,
    }


def write_summary(path: Path, summary: dict) -> None:
    """Write `summary` as JSON (non-finite numbers as strings, as in metrics.jsonl), atomically: a failure (a full
    disk) leaves the previous file as it was; it is logged, not raised: the console still gets the summary."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(json_safe(summary), f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        log.error("could not write %s: %s", path, e)
        tmp.unlink(missing_ok=True)


def unigram_entropy(dataset, vocab_size: int, max_samples: int = 2000) -> float | None:
    """Entropy (nats/token) of the dataset's unigram distribution, from a sample of it: the loss a model that
    ignores context would reach. A trained model's validation loss should be well below. None if it fails."""
    try:
        n = len(dataset)
        idx = np.linspace(0, n - 1, num=min(n, max_samples), dtype=np.int64)
        counts = np.zeros(vocab_size, dtype=np.int64)
        for i in idx:
            tokens = np.asarray(dataset[int(i)]["tokens"])
            counts += np.bincount(tokens, minlength=counts.size)[: counts.size]
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())
    except Exception:  # noqa: BLE001 - a diagnostic only
        return None
