"""Evaluation: when (every `train.eval_interval` steps, at the last step, and with `train.eval_at_start` before a
fresh run's first step) and what (the per-token validation loss over `train.eval_iters` global batches from the
start of the valid split, and the loops the FFN took; with `train.eval_train_mode` also the loss with the loop
counts sampled as in training)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from vffn_pretrain.model.ffn import state as ffn_state
from vffn_pretrain.training.config import TrainConfig
from vffn_pretrain.training.ffn_stats import window_ffn_stats
from vffn_pretrain.training.step import train_step


class Evaluator:
    """`enabled` is false without validation data or with train.eval_iters=0. `last` is the newest record."""

    def __init__(self, train: TrainConfig, has_valid_data: bool):
        self.interval = train.eval_interval
        self.iters = train.eval_iters
        self.seq_length, self.micro_batch_size = train.seq_length, train.micro_batch_size
        self.enabled = train.eval_iters > 0 and has_valid_data
        self.at_start = train.eval_at_start
        self.train_mode = train.eval_train_mode
        self.last: dict | None = None

    def should_evaluate(self, step: int, max_steps: int) -> bool:
        return self.enabled and (step % self.interval == 0 or step == max_steps)

    def should_evaluate_at_start(self, step: int) -> bool:
        """Before the first step of a fresh run (a resumed run already has its step-0 record, if any)."""
        return self.enabled and self.at_start and step == 0

    def evaluate(self, step: int, ddp_chunks: list, optimizer, micro_batches: Callable[[int], list[dict]],
                 noise_seed: int = 0, stop: Callable[[], bool] | None = None) -> dict | None:
        """Collective. `micro_batches(i)` is this rank's share of the i-th validation global batch; each pass
        calls it for i = 0, 1, ... in order, and it must give the same batches on every pass. Returns the
        record (step, val_loss, val_ppl, val_mean_loops and, for adaptive FFNs, val_loop_hist summed over
        layers; with train.eval_train_mode, val_loss_train_mode); the training statistics gathered since the
        last log line are dropped. `stop()` (collective: the same answer on every rank) is asked before each
        batch; when it says so, evaluation is abandoned and None returned."""
        ffn_state.collect_stats(ddp_chunks, reset=True)
        val_loss = self._loss(ddp_chunks, optimizer, micro_batches, training=False, stop=stop)
        stats = window_ffn_stats(ddp_chunks)
        if val_loss is None:
            return None
        record = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)),
                  "val_mean_loops": stats.get("mean_loops") if stats else None}
        if self.train_mode:
            # Only a loop head samples anything in train mode (no dropout in this project): the other kinds
            # compute the same function in both modes.
            sampled = any(getattr(m, "adaptive", False) for m in ffn_state.ffn_modules(ddp_chunks))
            train_mode = (self._loss(ddp_chunks, optimizer, micro_batches, training=True, noise_seed=noise_seed,
                                     stop=stop) if sampled else val_loss)
            ffn_state.collect_stats(ddp_chunks, reset=True)  # not training statistics
            if train_mode is None:
                return None
            record["val_loss_train_mode"] = train_mode
        if stats:
            hist = None
            for layer in ffn_state.layer_stats(stats).values():
                h = np.asarray(layer["raw"]["loop_hist"], dtype=np.float64)
                hist = h if hist is None else hist + h
            record["val_loop_hist"] = None if hist is None else hist.tolist()
        self.last = record
        return record

    def _loss(self, ddp_chunks: list, optimizer, micro_batches, *, training: bool, noise_seed: int = 0,
              stop: Callable[[], bool] | None = None) -> float | None:
        """Per-token loss over the validation batches, no gradients, in eval mode or in train mode (None when
        `stop()` said so before a batch). Train mode seeds each batch's Gumbel noise from (noise_seed, its
        evaluation key) and restores the RNG state after, so an evaluation never changes what training draws."""
        for chunk in ddp_chunks:
            chunk.train(training)
        loss_sum, tokens, stopped = 0.0, 0, False
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()):
            for i in range(self.iters):
                if stop is not None and stop():
                    stopped = True
                    break
                res = train_step(ddp_chunks, optimizer, micro_batches(i), seq_length=self.seq_length,
                                 micro_batch_size=self.micro_batch_size, forward_only=True,
                                 noise_seed=noise_seed if training else None)
                loss_sum += res.loss * res.num_tokens
                tokens += res.num_tokens
        for chunk in ddp_chunks:
            chunk.train()
        return None if stopped else loss_sum / max(tokens, 1)

    def loop_mix(self) -> list[float] | None:
        """The share of tokens at each loop count in the last evaluation (None without one, or without loops)."""
        hist = (self.last or {}).get("val_loop_hist")
        if not hist:
            return None
        hist = np.asarray(hist, dtype=np.float64)
        return [float(x) for x in hist / hist.sum()] if hist.sum() > 0 else None


def _cuda_devices() -> list[int]:
    """The device whose generator state train-mode evaluation saves and restores (none on a CPU run)."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []
