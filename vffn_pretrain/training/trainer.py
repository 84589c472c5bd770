"""The pretraining loop: set-up, resume, steps, evaluation, checkpoints, signals and the end-of-run summary.

Side concerns (console, metrics.jsonl, wandb, TensorBoard) are callbacks on rank 0; the math lives in the model
and in `step.train_step`; the parallel plumbing in megatron-core and `vffn_pretrain.parallel`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from omegaconf import OmegaConf

from vffn_pretrain.config import RunConfig
from vffn_pretrain.config_errors import ConfigError
from vffn_pretrain.model import counting
from vffn_pretrain.model.ffn import state as ffn_state
from vffn_pretrain.model.gpt import RecomputeConfig, build_model
from vffn_pretrain.model.kinds import traits
from vffn_pretrain.model.shapes import counting_shapes
from vffn_pretrain.parallel import device as rank_device
from vffn_pretrain.parallel import init_distributed, seed_all, setup_model_parallel
from vffn_pretrain.parallel.init import set_collective_timeout
from vffn_pretrain.parallel.preflight import preflight
from vffn_pretrain.training import callbacks as cb
from vffn_pretrain.training.checkpointing import CheckpointManager, CheckpointSaveError, ModelChangedError
from vffn_pretrain.training.errors import RunError
from vffn_pretrain.training.lr import build_scheduler
from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp
from vffn_pretrain.training.run_lock import RunDirLocked, RunLock
from vffn_pretrain.training.signals import EXIT_REQUEUE, StopRequest
from vffn_pretrain.training.step import train_step
from vffn_pretrain.training.throughput import device_peak_flops, mfu

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DIVERGED = 2  # train.max_skipped_steps consecutive NaN/Inf steps


def model_shapes(cfg: RunConfig) -> tuple[counting.ModelShape, counting.FFNShape | list[counting.FFNShape]]:
    """The run's counting shapes (a list of per-layer FFN shapes for a mixed model)."""
    return counting_shapes(cfg.model, cfg.ffn, tp=cfg.parallel.tp, seq_length=cfg.train.seq_length)


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.callbacks: list[cb.Callback] = []
        self.wandb: cb.WandbLogger | None = None
        # The latest window's per-layer loop histograms {layer number: counts}, saved with each checkpoint for
        # the pipeline planner (parallel.pipeline_layout=auto replans from them on resume).
        self.loop_hists: dict[str, list[float]] = {}

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg = self.cfg
        self.rank, self.world = init_distributed(cfg.parallel.init_timeout_s)
        self.ranks_info = preflight(timeout_s=cfg.parallel.init_timeout_s)
        set_collective_timeout(cfg.parallel.collective_timeout_min)  # init_timeout_s bounded the start-up only
        setup_model_parallel(cfg.parallel)
        seed_all(cfg.train.seed)
        self.device = rank_device()
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.num_micro = cfg.train.global_batch_size // (cfg.train.micro_batch_size * self.dp_size)
        self._take_run_dir()
        use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and torch.cuda.is_available())
        self.params_dtype = torch.bfloat16 if use_bf16 else torch.float32

        self._build_data()
        recompute = RecomputeConfig(cfg.train.recompute_granularity, cfg.train.recompute_method,
                                    cfg.train.recompute_num_layers)
        self.chunks = build_model(cfg.model, cfg.ffn, cfg.parallel, params_dtype=self.params_dtype,
                                  recompute=recompute, backend=cfg.train.backend, init_seed=cfg.train.seed)
        self.ddp = wrap_ddp(self.chunks, cfg.parallel)
        t = cfg.train
        self.optimizer = build_optimizer(
            self.ddp, OptimConfig(lr=t.lr, min_lr=t.lr * t.min_lr_ratio, weight_decay=t.weight_decay,
                                  beta1=t.beta1, beta2=t.beta2, eps=t.eps, clip_grad=t.clip_grad),
            cfg.parallel, bf16=use_bf16)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.ckpt = CheckpointManager(cfg.checkpoint_dir, keep=cfg.checkpoint.keep)
        self.layout = {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.effective_vpp,
                       "dp": self.dp_size, "world": self.world}
        self.step, self.consumed_samples, wandb_id = 0, 0, None
        self.last_checkpoint: Path | None = None
        loaded = self._load_latest() if cfg.checkpoint.resume else None
        if loaded is not None:
            common = loaded.common
            self.step, self.consumed_samples = int(common["step"]), int(common["consumed_samples"])
            self.scheduler.load_state_dict(common["scheduler"])
            wandb_id = common.get("wandb_id")
            self.last_checkpoint = loaded.path
            self._report_schedule_change(common)
        elif t.init_from:
            from vffn_pretrain.training.convert import load_dense_into

            try:
                load_dense_into(t.init_from, self.ddp, cfg)
            except FileNotFoundError as e:
                raise ConfigError("train.init_from", f"{t.init_from}: {str(e).split(': ', 1)[-1]}") from None
        self.start_step = self.step
        if self.rank == 0:  # only now: a run that fails to start leaves no config behind
            OmegaConf.save(OmegaConf.create(cfg.raw), cfg.run_dir / "config.yaml")
        self.train_iter = self._loader(self.train_ds, self.consumed_samples, cycle=False)
        self._setup_callbacks(wandb_id)

    # ------------------------------------------------------------------------------------------------ guards
    def _take_run_dir(self) -> None:
        """Rank 0 creates run_dir and takes its lock; every rank raises RunError if that fails."""
        self.lock = RunLock(self.cfg.run_dir)
        self.created_run_dir = False
        error = None
        if self.rank == 0:
            try:
                self.created_run_dir = not self.cfg.run_dir.exists()
                self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
            except (RunDirLocked, OSError) as e:
                error = str(e)
        if self._agree(error is not None):
            raise RunError(error or "rank 0 could not take the run directory")

    def release(self, failed: bool) -> None:
        """Drop the run_dir lock; after a failed start, remove the run_dir this run created if it is empty."""
        lock = getattr(self, "lock", None)
        if lock is None or not lock.held:
            return
        lock.release()
        if failed and self.created_run_dir:
            try:
                self.cfg.run_dir.rmdir()
            except OSError:
                pass

    def _load_latest(self):
        try:
            return self.ckpt.load_latest(self.ddp, self.optimizer, self.layout, config=self.cfg.raw)
        except ModelChangedError as e:
            raise ConfigError("model", str(e)) from None

    def _report_schedule_change(self, common: dict) -> None:
        """A resume with another train.max_steps: megatron's scheduler keeps the checkpoint's decay length while
        the τ decay follows the new train.max_steps. Say so, with the numbers, in one line."""
        old_steps = ((common.get("config") or {}).get("train") or {}).get("max_steps")
        t, sched = self.cfg.train, self.scheduler
        if old_steps is None or int(old_steps) == t.max_steps or self.rank != 0:
            return
        group = self.optimizer.param_groups[0]
        lr_now = sched.get_lr(group)
        restored = sched.num_steps
        sched.num_steps = t.max_steps
        lr_end = sched.get_lr(group)
        sched.num_steps = restored
        tau_old = ffn_state.current_tau(self.cfg.ffn, self.step, int(old_steps))
        tau_new = ffn_state.current_tau(self.cfg.ffn, self.step, t.max_steps)
        log.warning("train.max_steps changed from %s to %s at step %d: the LR schedule keeps the checkpoint's "
                    "decay over %d steps (LR now %.3g, %.3g at step %d); the tau decay is re-stretched to %d steps "
                    "(tau now %s, was %s). To pause a run use train.exit_interval; to make a run extendable use "
                    "train.lr_schedule=wsd.", old_steps, t.max_steps, self.step, sched.lr_decay_steps, lr_now,
                    lr_end, t.max_steps, t.max_steps, _fmt(tau_new), _fmt(tau_old))

    def _build_data(self) -> None:
        """The datasets; a data problem (missing or damaged prefix, empty dataset, tokenizer mismatch) is a
        ConfigError naming the data key, raised on every rank."""
        from vffn_pretrain.data.builder import build_datasets
        from vffn_pretrain.data.tokenizer import build_tokenizer

        cfg, t = self.cfg, self.cfg.train
        evals = t.max_steps // t.eval_interval + 1
        # The test split is not used in training: ask for no test samples.
        num_samples = (t.max_steps * t.global_batch_size, max(1, evals * t.eval_iters * t.global_batch_size), 0)
        try:
            self.tokenizer = build_tokenizer(cfg.data.tokenizer)
            self.train_ds, self.valid_ds, _ = build_datasets(
                cfg.data, seq_length=t.seq_length, seed=cfg.data.seed if cfg.data.seed is not None else t.seed,
                num_samples=num_samples, tokenizer=self.tokenizer,
                padded_vocab_size=cfg.model.padded_vocab_size(cfg.parallel.tp))
        except (ValueError, OSError) as e:
            key, sep, reason = str(e).partition(": ")
            if not (sep and key.startswith("data.")):
                key, reason = "data.tokenizer" if "okenizer" in str(e) else "data.paths", str(e)
            raise ConfigError(key, reason) from None
        self.eval_enabled = t.eval_iters > 0 and self.valid_ds is not None
        if t.eval_iters > 0 and self.valid_ds is None and self.rank == 0:
            log.warning("no validation data (data.split=%r gives the valid split no documents, or data.valid_paths "
                        "is unset): evaluation is skipped; set train.eval_iters=0 to silence this", cfg.data.split)

    def _loader(self, dataset, consumed: int, cycle: bool):
        from vffn_pretrain.data.loader import build_dataloader

        t = self.cfg.train
        return build_dataloader(dataset, consumed_samples=consumed, micro_batch_size=t.micro_batch_size,
                                global_batch_size=t.global_batch_size, dp_rank=self.dp_rank, dp_size=self.dp_size,
                                num_workers=self.cfg.data.num_workers, cycle=cycle)

    def _setup_callbacks(self, wandb_id: str | None) -> None:
        cfg = self.cfg
        m_shape, f_shape = model_shapes(cfg)
        params = counting.count_params(m_shape, f_shape)
        self.flops_per_token_train = counting.flops_per_token(m_shape, f_shape, training=True)
        # Throughput and MFU count the width path as this layout computes it (the paper's count is for C).
        width_form = self.width_form = counting.width_path_form(cfg.ffn.kind, cfg.parallel.tp, self.device.type)
        # token-sparse recursion (not under SP) makes the backward follow the sampled loops: counted per window
        self.token_sparse = (cfg.ffn.token_sparse_recursion and not (cfg.parallel.sp and cfg.parallel.tp > 1)
                             and any(traits(k).adaptive_depth for k in cfg.ffn.layer_kinds(cfg.model.num_layers)))
        self.flops_per_token_executed = counting.flops_per_token(m_shape, f_shape, training=True,
                                                                 width_form=width_form,
                                                                 token_sparse=self.token_sparse)
        self.peak = device_peak_flops()
        self.info = {
            "run_name": cfg.run_name, "run_dir": str(cfg.run_dir), "checkpoint_dir": str(cfg.checkpoint_dir),
            "params_total": params["params_total"], "params_non_embedding": params["params_non_embedding"],
            "flops_per_token_train": self.flops_per_token_train, "world_size": self.world, "tp": cfg.parallel.tp,
            "pp": cfg.parallel.pp, "dp": self.dp_size, "device": self.peak.device, "start_step": self.step,
            "max_steps": cfg.train.max_steps, "flops_per_token_executed": self.flops_per_token_executed,
            "width_path_form": width_form, "mfu_peak": self.peak.describe(),
            "peak_tflops": self.peak.flops / 1e12 if self.peak.flops else None,
        }
        if self.rank != 0:
            return
        self.callbacks = [cb.ConsoleLogger(cfg.logging.progress_bar), cb.MetricsFile(cfg.run_dir / "metrics.jsonl")]
        if cfg.logging.wandb.enabled:
            w = cfg.logging.wandb
            try:
                system_metrics = torch.cuda.is_available() if w.system_metrics == "auto" else w.system_metrics
                self.wandb = cb.WandbLogger(w.project, w.entity, w.mode, cfg.run_dir, cfg.run_name, wandb_id, cfg.raw,
                                            system_metrics=system_metrics)
                self.callbacks.append(self.wandb)
            except Exception as e:  # noqa: BLE001 - logging must not cost the run
                log.warning("wandb disabled: %s", e)
        if cfg.logging.tensorboard:
            self.callbacks.append(cb.TensorBoardLogger(cfg.run_dir / "tensorboard"))
        for c in self.callbacks:
            c.on_train_start(self.info)

    def _emit(self, hook: str, payload) -> None:
        for c in self.callbacks:
            getattr(c, hook)(payload)

    # ------------------------------------------------------------------------------------------------ steps
    def _micro_batches(self, iterator, step: int) -> list[dict]:
        out = []
        for m in range(self.num_micro):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(iterator).items()}
            batch["mb_key"] = (step, self.dp_rank * self.num_micro + m)
            out.append(batch)
        return out

    def _agree(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def fit(self) -> int:
        stop = StopRequest()
        try:
            return self._fit(stop)
        except CheckpointSaveError as e:
            # A full disk, say: older checkpoints are intact. Say so in one line and still write the summary.
            self._emit("on_message", f"error: {e}")
            self.finish(EXIT_ERROR)
            return EXIT_ERROR
        finally:
            # After finish(): a second SIGTERM (torchrun sends one when another rank exits 3) must not cut the
            # summary short.
            stop.restore()

    def _fit(self, stop: StopRequest) -> int:
        cfg, t = self.cfg, self.cfg.train
        tokens_per_step = t.global_batch_size * t.seq_length
        skipped_total, skipped_in_a_row = 0, 0
        window_loss, window_steps, window_start = [], 0, time.perf_counter()
        self.run_start = time.perf_counter()
        self.final_train_loss = self.final_val_loss = None
        self.val_record: dict | None = None
        exit_code = EXIT_OK
        while self.step < t.max_steps:
            ffn_state.set_training_step(self.ddp, self.step, t.max_steps)
            micro = self._micro_batches(self.train_iter, self.step)
            result = train_step(self.ddp, self.optimizer, micro, seq_length=t.seq_length,
                                micro_batch_size=t.micro_batch_size, noise_seed=t.seed)
            self.scheduler.step(increment=1)
            self.step += 1
            self.consumed_samples += t.global_batch_size
            if result.skipped:
                skipped_total += 1
                skipped_in_a_row += 1
                self._emit("on_message", f"step {self.step}: loss {result.loss} or gradient not finite; "
                                         f"skipped ({skipped_in_a_row} in a row)")
                if skipped_in_a_row >= t.max_skipped_steps:
                    where = self.last_checkpoint or "none saved yet"
                    msg = (f"stopping: {skipped_in_a_row} consecutive steps had NaN/Inf loss or gradients "
                           f"(train.max_skipped_steps={t.max_skipped_steps}) at step {self.step}. "
                           f"Last good checkpoint: {where}. A vocab/tokenizer mismatch or too high a "
                           "train.lr are the usual causes.")
                    self._emit("on_message", msg)
                    log.error(msg)
                    exit_code = EXIT_DIVERGED
                    break
            else:
                skipped_in_a_row = 0
                window_loss.append(result.loss)
                self.final_train_loss = result.loss
            window_steps += 1

            if self.step % cfg.logging.interval == 0 or self.step == t.max_steps:
                elapsed = time.perf_counter() - window_start
                record = self._train_record(result, window_loss, window_steps, elapsed, tokens_per_step,
                                            skipped_total)
                self._emit("on_log", record)
                window_loss, window_steps, window_start = [], 0, time.perf_counter()
            paused = time.perf_counter()
            # Save first: a failing evaluation must not cost the checkpoint.
            if self.step % cfg.checkpoint.interval == 0 or self.step == t.max_steps:
                self.save()
            if self.eval_enabled and (self.step % t.eval_interval == 0 or self.step == t.max_steps):
                self.evaluate()
            window_start += time.perf_counter() - paused  # throughput counts training time only
            if t.exit_interval and self.step - self.start_step >= t.exit_interval and self.step < t.max_steps:
                if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:07d}"):
                    self.save()
                self._emit("on_message", f"train.exit_interval={t.exit_interval} reached at step {self.step}; "
                                         "run the same command again to continue")
                break
            if self._agree(stop.requested):
                if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:07d}"):
                    self.save()
                self._emit("on_message", f"{stop.signal_name or 'stop signal'} received: saved "
                                         f"{self.last_checkpoint}; exiting with {EXIT_REQUEUE} (requeue)")
                exit_code = EXIT_REQUEUE
                break
        self.finish(exit_code)
        self.release(failed=False)  # the run is over: the next command on this run_dir may take it
        return exit_code

    def _train_record(self, result, window_loss, window_steps, elapsed, tokens_per_step, skipped_total) -> dict:
        t = self.cfg.train
        tokens_per_sec = tokens_per_step * window_steps / max(elapsed, 1e-9)
        stats = self._ffn_stats()
        if stats:
            self.loop_hists = {str(n): layer["loop_hist"] for n, layer in ffn_state.layer_stats(stats).items()
                               if layer.get("loop_hist")}
        tflops = self._executed_flops_per_token(stats) * tokens_per_sec / self.world / 1e12
        record: dict[str, Any] = {
            "step": self.step,
            "max_steps": t.max_steps,
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_samples * t.seq_length,
            "loss": result.loss,
            "loss_avg": float(np.mean(window_loss)) if window_loss else float("nan"),
            "lr": self.scheduler.get_lr(self.optimizer.param_groups[0]),
            "grad_norm": result.grad_norm,
            "tau": ffn_state.current_tau(self.cfg.ffn, self.step, t.max_steps) if stats else None,
            "mean_loops": stats.get("mean_loops") if stats else None,
            "graph_work_fraction": ffn_state.graph_work_fraction(stats) if stats else None,
            "tokens_per_sec": tokens_per_sec,
            "tflops_per_device": tflops,
            "mfu": mfu(tflops, self.peak.flops),
            "skipped_steps": skipped_total,
            "elapsed_s": time.perf_counter() - self.run_start,
            "eta_s": (t.max_steps - self.step) * elapsed / max(window_steps, 1),
        }
        if stats and (self.step % self.cfg.logging.stats_interval == 0 or self.step == t.max_steps):
            record["layers"] = {str(n): {k: v for k, v in layer.items() if k != "raw"}
                                for n, layer in ffn_state.layer_stats(stats).items()}
        return record

    def _executed_flops_per_token(self, stats: dict | None) -> float:
        """Training FLOPs per token as executed in the last logging window: with token-sparse recursion the FFN's
        backward follows the loop mix sampled in that window (pooled over the adaptive layers: the count is
        linear in the mix and those layers have the same shape)."""
        if not (self.token_sparse and stats):
            return self.flops_per_token_executed
        kinds = self.cfg.ffn.layer_kinds(self.cfg.model.num_layers)
        adaptive = [layer["loop_hist"] for number, layer in ffn_state.layer_stats(stats).items()
                    if traits(kinds[number - 1]).adaptive_depth]
        hist = [sum(col) for col in zip(*adaptive)]
        if not hist or not sum(hist):
            return self.flops_per_token_executed
        m_shape, f_shape = model_shapes(self.cfg)
        return counting.flops_per_token(m_shape, f_shape, training=True, width_form=self.width_form,
                                        token_sparse=True, loop_mix=[c / sum(hist) for c in hist])

    def _ffn_stats(self) -> dict | None:
        """Per-layer FFN statistics since the last call, summed over the ranks holding different tokens and
        merged over pipeline stages (collective). None for FFNs without any (dense, kloop)."""
        stats = ffn_state.reduce_stats(ffn_state.collect_stats(self.ddp, reset=True))
        return stats if ffn_state.layer_stats(stats) else None

    # ------------------------------------------------------------------------------------------------ eval
    def evaluate(self) -> dict:
        t = self.cfg.train
        ffn_state.collect_stats(self.ddp, reset=True)  # training stats since the last log line are dropped
        for chunk in self.ddp:
            chunk.eval()
        it = self._loader(self.valid_ds, 0, cycle=True)
        loss_sum, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(t.eval_iters):
                micro = self._micro_batches(it, -1 - i)
                res = train_step(self.ddp, self.optimizer, micro, seq_length=t.seq_length,
                                 micro_batch_size=t.micro_batch_size, forward_only=True)
                loss_sum += res.loss * res.num_tokens
                tokens += res.num_tokens
        for chunk in self.ddp:
            chunk.train()
        stats = self._ffn_stats()
        val_loss = loss_sum / max(tokens, 1)
        record = {"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)),
                  "val_mean_loops": stats.get("mean_loops") if stats else None}
        if stats:
            hist = None
            for layer in ffn_state.layer_stats(stats).values():
                h = np.asarray(layer["raw"]["loop_hist"], dtype=np.float64)
                hist = h if hist is None else hist + h
            record["val_loop_hist"] = None if hist is None else hist.tolist()
        self.final_val_loss = val_loss
        self.val_record = record
        self._emit("on_eval", record)
        return record

    # ------------------------------------------------------------------------------------------------ saving
    def save(self) -> None:
        common = {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "scheduler": self.scheduler.state_dict(),
            "wandb_id": self.wandb.run_id if self.wandb else None,
            "config": self.cfg.raw,
        }
        loop_stats = {"pipeline_layout": self.cfg.parallel.pipeline_layout, "loop_hist": self.loop_hists}
        self.last_checkpoint = self.ckpt.save(self.step, self.ddp, self.optimizer, common, self.layout, loop_stats)
        self._emit("on_message", f"saved checkpoint {self.last_checkpoint}")

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self, exit_code: int) -> None:
        cfg = self.cfg
        m_shape, f_shape = model_shapes(cfg)
        loop_mix = None
        if self.val_record and self.val_record.get("val_loop_hist"):
            hist = np.asarray(self.val_record["val_loop_hist"], dtype=np.float64)
            if hist.sum() > 0:
                loop_mix = [float(x) for x in hist / hist.sum()]
        try:
            flops_eval = counting.flops_per_token(m_shape, f_shape, training=False, loop_mix=loop_mix)
        except (ValueError, TypeError):
            flops_eval = counting.flops_per_token(m_shape, f_shape, training=False)
        wall = time.perf_counter() - self.run_start
        summary = {
            # k-loop variants differ by k: keep them apart in sweeps.
            "variant": f"{cfg.ffn.kind}{cfg.ffn.loops}" if traits(cfg.ffn.kind).fixed_loops else cfg.ffn.kind,
            "model": cfg.model.name,
            "params_total": self.info["params_total"],
            "params_non_embedding": self.info["params_non_embedding"],
            "flops_per_token_train": self.flops_per_token_train,
            "flops_per_token_eval": flops_eval,
            "flops_per_token_executed": self.flops_per_token_executed,
            "mfu_peak": self.info["mfu_peak"],
            "eval_loop_mix": loop_mix,
            "tokens": self.consumed_samples * cfg.train.seq_length,
            "steps": self.step,
            "final_train_loss": self.final_train_loss,
            "final_val_loss": self.final_val_loss,
            "final_val_ppl": math.exp(min(self.final_val_loss, 50.0)) if self.final_val_loss is not None else None,
            "wall_time_s": wall,
            "exit_code": exit_code,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "metrics": str(cfg.run_dir / "metrics.jsonl"),
            "wandb": self.wandb.files if self.wandb else None,
        }
        if self.rank == 0:
            entropy = self._unigram_entropy()
            if entropy is not None:
                summary["unigram_entropy"] = entropy
            try:
                with open(cfg.run_dir / "summary.json", "w") as f:
                    json.dump(summary, f, indent=2)
            except OSError as e:  # a full disk: the console still gets the summary
                log.error("could not write %s: %s", cfg.run_dir / "summary.json", e)
        self._emit("on_train_end", summary)
        self.summary = summary

    def _unigram_entropy(self, max_samples: int = 2000) -> float | None:
        """Entropy (nats/token) of the training data's unigram distribution, from a sample of it: the loss a
        model that ignores context would reach. A trained model's validation loss should be well below."""
        try:
            n = len(self.train_ds)
            idx = np.linspace(0, n - 1, num=min(n, max_samples), dtype=np.int64)
            counts = np.zeros(self.cfg.model.padded_vocab_size(self.cfg.parallel.tp), dtype=np.int64)
            for i in idx:
                tokens = np.asarray(self.train_ds[int(i)]["tokens"])
                counts += np.bincount(tokens, minlength=counts.size)[: counts.size]
            p = counts[counts > 0] / counts.sum()
            return float(-(p * np.log(p)).sum())
        except Exception:  # noqa: BLE001 - a diagnostic only
            return None


def _fmt(tau) -> str:
    return "n/a" if tau is None else f"{tau:.3g}"


def run(cfg: RunConfig) -> int:
    trainer = Trainer(cfg)
    failed = True
    try:
        trainer.setup()
        failed = False
        return trainer.fit()
    finally:
        trainer.release(failed)
