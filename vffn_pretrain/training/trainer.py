"""The pretraining loop: `setup()` builds (or resumes) the run, `fit()` trains it to the end.

`fit()` is a loop over components, each in its own file: the step itself (`step.train_step`), the
divergence guard (`divergence`), speed and MFU (`speed`, `flops`), the checkpoint manager (`checkpointing`,
which also says when to save), the evaluator (`evaluator`, which also says when to evaluate), the end-of-run
summary (`summary`), stop signals (`signals`) and the run_dir lock (`run_lock`). Side concerns (console,
metrics.jsonl, wandb, TensorBoard) are callbacks on rank 0; the math lives in the model; the parallel plumbing
in megatron-core and `vffn_pretrain.parallel`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from omegaconf import OmegaConf

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.run import RunConfig, validate_layout
from vffn_pretrain.model import counting
from vffn_pretrain.model.ffn import state as ffn_state
from vffn_pretrain.model.gpt import RecomputeConfig, build_model
from vffn_pretrain.model.shapes import counting_shapes
from vffn_pretrain.parallel.config import AUTO_LAYOUT
from vffn_pretrain.parallel.init import device as rank_device
from vffn_pretrain.parallel.init import (
    init_distributed,
    seed_all,
    set_collective_timeout,
    setup_model_parallel,
)
from vffn_pretrain.parallel.preflight import preflight
from vffn_pretrain.process.threads import (
    OtherLoad,
    ThreadPlan,
    competition_note,
    configure_cpu_threads,
)
from vffn_pretrain.training.callbacks.base import Callback
from vffn_pretrain.training.callbacks.build import build_callbacks
from vffn_pretrain.training.callbacks.wandb_logger import WandbLogger
from vffn_pretrain.training.checkpointing import (
    CheckpointManager,
    CheckpointSaveError,
    LoadedCheckpoint,
    ModelChangedError,
    SavedCheckpoint,
)
from vffn_pretrain.training.divergence import DivergenceGuard
from vffn_pretrain.training.errors import RunError
from vffn_pretrain.training.evaluator import Evaluator
from vffn_pretrain.training.ffn_stats import window_ffn_stats
from vffn_pretrain.training.flops import RunFlops
from vffn_pretrain.training.lr import build_scheduler, schedule_change_message
from vffn_pretrain.training.numerics import params_dtype, use_deterministic_kernels
from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp
from vffn_pretrain.training.optimizer_layouts import LayoutRefused
from vffn_pretrain.training.run_lock import RunDirLocked, RunLock
from vffn_pretrain.training.signals import EXIT_REQUEUE, StopRequest
from vffn_pretrain.training.speed import Speedometer
from vffn_pretrain.training.step import StepResult, train_step
from vffn_pretrain.training.summary import run_summary, unigram_entropy, write_summary
from vffn_pretrain.training.throughput import device_peak_flops

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DIVERGED = 2  # train.max_skipped_steps consecutive NaN/Inf steps


def model_shapes(cfg: RunConfig) -> tuple[counting.ModelShape, counting.FFNShape | list[counting.FFNShape]]:
    """The run's counting shapes (a list of per-layer FFN shapes for a mixed model)."""
    return counting_shapes(cfg.model, cfg.ffn, tp=cfg.parallel.tp, seq_length=cfg.train.seq_length)


class Trainer:
    """`Trainer(cfg)` does no work; `setup()` is collective and fills in everything below; `fit()` trains."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        # The world (setup)
        self.rank, self.world = 0, 1
        self.ranks_info: Any = None  # the pre-flight check's report
        self.device: torch.device | None = None
        self.dp_rank, self.dp_size = 0, 1
        self.num_micro = 0  # micro-batches per global batch on this DP rank
        self.lock: RunLock | None = None
        self.created_run_dir = False
        # Data, model, optimizer (setup)
        self.tokenizer = None
        self.train_ds = self.valid_ds = None
        self.train_iter = None
        self.params_dtype = torch.float32
        self.chunks: list = []
        self.ddp: list = []
        self.optimizer = None
        self.scheduler = None
        self.layout: dict = {}  # the parallel layout, saved with each checkpoint
        # Components (setup)
        self.ckpt: CheckpointManager | None = None
        self.evaluator: Evaluator | None = None
        self.guard = DivergenceGuard(cfg.train.max_skipped_steps, say=self._say)
        self.speed: Speedometer | None = None
        self.flops: RunFlops | None = None
        self.callbacks: list[Callback] = []
        self.wandb: WandbLogger | None = None
        self.info: dict = {}  # what the callbacks get at the start (parameter and FLOP counts, layout)
        # The latest window's per-layer loop histograms {layer number: counts}, saved with each checkpoint for
        # the pipeline planner (parallel.pipeline_layout=auto replans from them on resume).
        self.loop_hists: dict[str, list[float]] = {}
        # Progress
        self.step = self.start_step = 0
        self.consumed_samples = 0
        self.window_losses: list[float] = []  # finite losses since the last log record
        self.final_train_loss: float | None = None
        self.summary: dict | None = None  # after fit()

    @property
    def last_checkpoint(self) -> Path | None:
        return self.ckpt.last if self.ckpt else None

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        if cfg.system.deterministic:
            use_deterministic_kernels()
        threads = configure_cpu_threads()
        others = OtherLoad(threads.local_ranks)
        self.rank, self.world = init_distributed(cfg.parallel.init_timeout_s)
        self.ranks_info = preflight(timeout_s=cfg.parallel.init_timeout_s)
        set_collective_timeout(cfg.parallel.collective_timeout_min)  # init_timeout_s bounded the start-up only
        self._resolve_pipeline_layout()
        setup_model_parallel(cfg.parallel)
        seed_all(t.seed)
        self.device = rank_device()
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp_size)
        self._take_run_dir()
        self._build_data()
        self._build_model()
        self.ckpt = CheckpointManager(cfg.checkpoint_dir, keep=cfg.checkpoint.keep, interval=cfg.checkpoint.interval,
                                      async_save=cfg.checkpoint.async_save, on_saved=self._checkpoint_saved)
        self.layout = {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.effective_vpp,
                       "dp": self.dp_size, "world": self.world}
        loaded = self._resume() if cfg.checkpoint.resume else None
        if loaded is None and t.init_from:
            self._init_from_dense()
        self.start_step = self.step
        if self.rank == 0 and self.device.type == "cpu":
            self._report_cpu_threads(threads, others.busy_cores())
        if self.rank == 0:  # only now: a run that fails to start leaves no config behind
            OmegaConf.save(OmegaConf.create(cfg.raw), cfg.run_dir / "config.yaml")
        self.train_iter = self._loader(self.train_ds, self.consumed_samples, cycle=False)
        self.evaluator = Evaluator(t, has_valid_data=self.valid_ds is not None)
        shapes = model_shapes(cfg)  # the counting shapes of this run, from its config
        self.flops = RunFlops.for_run(cfg, shapes, self.device.type)
        self.speed = Speedometer(t.global_batch_size * t.seq_length, self.world, device_peak_flops())
        self.info = self._run_info(counting.count_params(*shapes))
        if self.rank == 0:
            wandb_id = loaded.common.get("wandb_id") if loaded else None  # a resumed run continues its wandb run
            self.callbacks, self.wandb = build_callbacks(cfg, wandb_id)
            self._emit("on_train_start", self.info)

    def _build_model(self) -> None:
        cfg, t, system = self.cfg, self.cfg.train, self.cfg.system
        self.params_dtype = params_dtype(system.precision)
        use_bf16 = self.params_dtype == torch.bfloat16
        recompute = RecomputeConfig(system.recompute_granularity, system.recompute_method,
                                    system.recompute_num_layers)
        self.chunks = build_model(cfg.model, cfg.ffn, cfg.parallel, params_dtype=self.params_dtype,
                                  recompute=recompute, backend=system.backend, init_seed=t.seed,
                                  fused_wgrad=True)
        self.ddp = wrap_ddp(self.chunks, cfg.parallel)
        self.optimizer = build_optimizer(self.ddp, OptimConfig.from_train(t), cfg.parallel, bf16=use_bf16)
        self.scheduler = build_scheduler(self.optimizer, t)

    @staticmethod
    def _report_cpu_threads(plan: ThreadPlan, others_busy: float) -> None:
        source = "OMP_NUM_THREADS" if plan.from_env else f"{plan.cores} usable cores / {plan.local_ranks} rank(s)"
        log.info("cpu: %d intra-op thread(s) per rank (%s)", plan.threads, source)
        note = competition_note(plan, others_busy)
        if note:
            log.warning("cpu: %s", note)

    def _resolve_pipeline_layout(self) -> None:
        """parallel.pipeline_layout=auto: rank 0 plans, every rank runs its layout (or raises its ConfigError)."""
        parallel = self.cfg.parallel
        if parallel.pipeline_layout != AUTO_LAYOUT:
            return
        outcome: list = [None, None]  # [layout, (key, reason) of a ConfigError]
        if self.rank == 0:
            from vffn_pretrain.planning.auto import resolve_auto_layout

            try:
                outcome[0] = resolve_auto_layout(self.cfg)
            except ConfigError as e:
                outcome[1] = (e.key, e.reason)
        dist.broadcast_object_list(outcome, src=0)
        layout, error = outcome
        if error is not None:
            raise ConfigError(*error)
        parallel.pipeline_layout = layout
        if layout is not None:
            validate_layout(parallel, self.cfg.model)

    # ------------------------------------------------------------------------------------------------ resume
    def _resume(self) -> LoadedCheckpoint | None:
        """Load the newest checkpoint that loads, if any: weights, optimizer, step, data position, LR schedule,
        RNG (the wandb run id saved with it is in its `common`)."""
        loaded = self._load_latest()
        if loaded is not None:
            common = loaded.common
            self.step, self.consumed_samples = int(common["step"]), int(common["consumed_samples"])
            self.scheduler.load_state_dict(common["scheduler"])
            old_steps = ((common.get("config") or {}).get("train") or {}).get("max_steps")
            if old_steps is not None and int(old_steps) != self.cfg.train.max_steps and self.rank == 0:
                log.warning(schedule_change_message(self.scheduler, self.optimizer, self.cfg.ffn, self.step,
                                                    int(old_steps), self.cfg.train.max_steps))
        return loaded

    def _load_latest(self):
        try:
            return self.ckpt.load_latest(self.ddp, self.optimizer, self.layout, config=self.cfg.raw)
        except ModelChangedError as e:
            raise ConfigError("model", str(e)) from None
        except LayoutRefused as e:
            raise ConfigError(e.key, str(e)) from None

    def _init_from_dense(self) -> None:
        """Continued pretraining: train.init_from names a dense checkpoint to start from."""
        from vffn_pretrain.training.convert import load_dense_into

        path = self.cfg.train.init_from
        try:
            load_dense_into(path, self.ddp, self.cfg)
        except FileNotFoundError as e:
            raise ConfigError("train.init_from", f"{path}: {str(e).split(': ', 1)[-1]}") from None

    # ------------------------------------------------------------------------------------------------ guards
    def _take_run_dir(self) -> None:
        """Rank 0 creates run_dir and takes its lock; every rank raises RunError if that fails."""
        self.lock = RunLock(self.cfg.run_dir)
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
        if self.lock is None or not self.lock.held:
            return
        self.lock.release()
        if failed and self.created_run_dir:
            try:
                self.cfg.run_dir.rmdir()
            except OSError:
                pass

    # ------------------------------------------------------------------------------------------------ data
    def _build_data(self) -> None:
        """The datasets; a data problem (missing or damaged prefix, empty dataset, tokenizer mismatch) is a
        ConfigError naming the data key, raised on every rank."""
        from vffn_pretrain.data.builder import build_datasets
        from vffn_pretrain.data.tokenizer import build_tokenizer

        cfg, t = self.cfg, self.cfg.train
        # Every evaluation reads the same first train.eval_iters global batches of the valid split, so that many
        # samples are asked for: megatron shuffles a split by the epochs a request spans, and a request that grew
        # with max_steps would give runs of different lengths different validation samples. The test split is
        # not used in training: no test samples.
        num_samples = (t.max_steps * t.global_batch_size, max(1, t.eval_iters * t.global_batch_size), 0)
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
        if t.eval_iters > 0 and self.valid_ds is None and self.rank == 0:
            log.warning("no validation data (data.split=%r gives the valid split no documents, or data.valid_paths "
                        "is unset): evaluation is skipped; set train.eval_iters=0 to silence this", cfg.data.split)

    def _loader(self, dataset, consumed: int, cycle: bool):
        from vffn_pretrain.data.loader import build_dataloader

        t = self.cfg.train
        return build_dataloader(dataset, consumed_samples=consumed, micro_batch_size=t.micro_batch_size,
                                global_batch_size=t.global_batch_size, dp_rank=self.dp_rank, dp_size=self.dp_size,
                                num_workers=self.cfg.data.num_workers, cycle=cycle)

    def _micro_batches(self, iterator, step: int) -> list[dict]:
        out = []
        for m in range(self.num_micro):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(iterator).items()}
            batch["mb_key"] = (step, self.dp_rank * self.num_micro + m)
            out.append(batch)
        return out

    # ------------------------------------------------------------------------------------------------ callbacks
    def _run_info(self, params: dict) -> dict:
        cfg, peak = self.cfg, self.speed.peak
        return {
            "run_name": cfg.run_name, "run_dir": str(cfg.run_dir), "checkpoint_dir": str(cfg.checkpoint_dir),
            "params_total": params["params_total"], "params_non_embedding": params["params_non_embedding"],
            "flops_per_token_train": self.flops.train, "world_size": self.world, "tp": cfg.parallel.tp,
            "pp": cfg.parallel.pp, "dp": self.dp_size, "device": peak.device, "start_step": self.step,
            "max_steps": cfg.train.max_steps, "flops_per_token_executed": self.flops.executed,
            "width_path_form": self.flops.width_form, "mfu_peak": peak.describe(),
            "peak_tflops": peak.flops / 1e12 if peak.flops else None,
        }

    def _emit(self, hook: str, payload) -> None:
        for c in self.callbacks:
            getattr(c, hook)(payload)

    def _say(self, text: str) -> None:
        self._emit("on_message", text)

    def _agree(self, flag: bool) -> bool:
        """Collective: true on every rank when `flag` is true on any."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    # ------------------------------------------------------------------------------------------------ the loop
    def fit(self) -> int:
        """Train from `step` to train.max_steps (or a stop); returns the exit code. Writes the summary."""
        t = self.cfg.train
        stop = StopRequest()
        self._start_fit()
        exit_code = EXIT_OK
        try:
            if self.evaluator.should_evaluate_at_start(self.step):
                with self.speed.paused():
                    self.evaluate()
            while self.step < t.max_steps:
                result = self.train_one_step()
                if self.guard.should_stop(self.step, result, self.last_checkpoint):
                    exit_code = EXIT_DIVERGED
                    break
                if self.step % self.cfg.logging.interval == 0 or self.step == t.max_steps:
                    self.log_step(result)
                with self.speed.paused():  # throughput counts training time only
                    self.ckpt.poll()  # a background write that every rank finished becomes a checkpoint
                    if self.ckpt.should_save(self.step, t.max_steps):  # before evaluating: a failing evaluation
                        self.save()                                     # must not cost the checkpoint
                    if self.evaluator.should_evaluate(self.step, t.max_steps):
                        if self.step == t.max_steps:
                            self.ckpt.wait()  # the run's last checkpoint is complete before its last evaluation
                        self.evaluate()
                stop_code = self._stop_code(stop)
                if stop_code is not None:
                    exit_code = stop_code
                    break
            self.ckpt.wait()
            self.finish(exit_code)
        except CheckpointSaveError as e:
            # A full disk, say: older checkpoints are intact. Say so in one line and still write the summary.
            self._say(f"error: {e}")
            self.finish(EXIT_ERROR)
            return EXIT_ERROR
        except BaseException:
            self.ckpt.finish_after_error()  # a failing evaluation must not cost the checkpoint in flight either
            raise
        finally:
            # After finish(): a second SIGTERM (torchrun sends one when another rank exits 3) must not cut the
            # summary short.
            stop.restore()
        self.release(failed=False)  # the run is over: the next command on this run_dir may take it
        return exit_code

    def _start_fit(self) -> None:
        self.speed.start_run()
        self.guard.reset()
        self.window_losses, self.final_train_loss = [], None
        self.evaluator.last = None

    def train_one_step(self) -> StepResult:
        """One optimizer step on the next global batch; advances `step` and `consumed_samples`."""
        t = self.cfg.train
        ffn_state.set_training_step(self.ddp, self.step, t.max_steps)
        micro = self._micro_batches(self.train_iter, self.step)
        result = train_step(self.ddp, self.optimizer, micro, seq_length=t.seq_length,
                            micro_batch_size=t.micro_batch_size, noise_seed=t.seed)
        self.scheduler.step(increment=1)
        self.step += 1
        self.consumed_samples += t.global_batch_size
        if not result.skipped:
            self.window_losses.append(result.loss)
            self.final_train_loss = result.loss
        self.speed.step_done()
        return result

    def _stop_code(self, stop: StopRequest) -> int | None:
        """Stop early, after saving, when train.exit_interval steps are done (EXIT_OK) or a stop signal came
        (EXIT_REQUEUE, agreed by every rank); None to go on."""
        t = self.cfg.train
        if t.exit_interval and self.step - self.start_step >= t.exit_interval and self.step < t.max_steps:
            self._save_unless_saved()
            self._say(f"train.exit_interval={t.exit_interval} reached at step {self.step}; run the same command "
                      "again to continue")
            return EXIT_OK
        if self._agree(stop.requested):
            self._save_unless_saved()
            self._say(f"{stop.signal_name or 'stop signal'} received: saved {self.last_checkpoint}; exiting with "
                      f"{EXIT_REQUEUE} (requeue)")
            return EXIT_REQUEUE
        return None

    def log_step(self, result: StepResult) -> None:
        """The training record of this logging window to the callbacks (metrics.jsonl, console, ...)."""
        t = self.cfg.train
        window_s = self.speed.window_seconds()
        stats = window_ffn_stats(self.ddp)
        if stats:
            self.loop_hists = {str(n): layer["loop_hist"] for n, layer in ffn_state.layer_stats(stats).items()
                               if layer.get("loop_hist")}
        speed = self.speed.measure(window_s, self.flops.executed_in_window(stats), t.max_steps - self.step)
        record: dict[str, Any] = {
            "step": self.step,
            "max_steps": t.max_steps,
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_samples * t.seq_length,
            "loss": result.loss,
            "loss_avg": float(np.mean(self.window_losses)) if self.window_losses else float("nan"),
            "lr": self.scheduler.get_lr(self.optimizer.param_groups[0]),
            "grad_norm": result.grad_norm,
            "tau": ffn_state.current_tau(self.cfg.ffn, self.step, t.max_steps) if stats else None,
            # The blend-in weight the step just taken used (docs/method.md §15); only while a ramp is configured.
            "blend": (ffn_state.blend_weight(self.cfg.ffn, self.step - 1) if self.cfg.ffn.blend_in_steps
                      else None),
            "mean_loops": stats.get("mean_loops") if stats else None,
            "graph_work_fraction": ffn_state.graph_work_fraction(stats) if stats else None,
            "tokens_per_sec": speed.tokens_per_sec,
            "tflops_per_device": speed.tflops_per_device,
            "mfu": speed.mfu,
            "skipped_steps": self.guard.skipped_total,
            "elapsed_s": speed.elapsed_s,
            "eta_s": speed.eta_s,
        }
        if stats and (self.step % self.cfg.logging.stats_interval == 0 or self.step == t.max_steps):
            record["layers"] = {str(n): {k: v for k, v in layer.items() if k != "raw"}
                                for n, layer in ffn_state.layer_stats(stats).items()}
        self._emit("on_log", record)
        self.window_losses = []
        self.speed.new_window()

    # ------------------------------------------------------------------------------------------------ eval
    def evaluate(self) -> dict:
        """Collective: evaluate now; the callbacks get the record."""
        # The model as the next step would train it: tau and the blend-in weight are functions of the step (at
        # step 0, before any train step has set them).
        ffn_state.set_training_step(self.ddp, self.step, self.cfg.train.max_steps)
        loader = []

        def micro_batches(i: int) -> list[dict]:
            if i == 0:  # every pass starts from the first validation batch: every pass scores the same batches
                loader[:] = [self._loader(self.valid_ds, 0, cycle=True)]
            return self._micro_batches(loader[0], -1 - i)

        record = self.evaluator.evaluate(self.step, self.ddp, self.optimizer, micro_batches,
                                         noise_seed=self.cfg.train.seed)
        self._emit("on_eval", record)
        return record

    # ------------------------------------------------------------------------------------------------ saving
    def save(self) -> None:
        """Collective: save a checkpoint of this step (with checkpoint.async_save, start writing it)."""
        common = {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "scheduler": self.scheduler.state_dict(),
            "wandb_id": self.wandb.run_id if self.wandb else None,
            "config": self.cfg.raw,
        }
        loop_stats = {"pipeline_layout": self.cfg.parallel.pipeline_layout, "loop_hist": self.loop_hists}
        path = self.ckpt.save(self.step, self.ddp, self.optimizer, common, self.layout, loop_stats)
        if self.ckpt.writing() == self.step:
            self._say(f"writing checkpoint {path} in the background")

    def _checkpoint_saved(self, saved: SavedCheckpoint) -> None:
        """A checkpoint became complete: one record per save to the callbacks (console, metrics.jsonl)."""
        self._emit("on_checkpoint", {"step": saved.step, "checkpoint": str(saved.path),
                                     "checkpoint_blocking_s": saved.blocking_s, "checkpoint_write_s": saved.write_s})

    def _save_unless_saved(self) -> None:
        """Before stopping: a checkpoint of this step, complete (a background write of it is waited for)."""
        if not self.ckpt.has_saved(self.step):
            self.save()
        self.ckpt.wait()

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self, exit_code: int) -> None:
        """The run summary: to run_dir/summary.json (rank 0), the callbacks and `self.summary`."""
        cfg, last_eval = self.cfg, self.evaluator.last
        summary = run_summary(
            cfg, info=self.info, flops_eval=self.flops.eval(self.evaluator.loop_mix()),
            eval_loop_mix=self.evaluator.loop_mix(), steps=self.step, consumed_samples=self.consumed_samples,
            final_train_loss=self.final_train_loss, final_val_loss=last_eval["val_loss"] if last_eval else None,
            final_val_loss_train_mode=last_eval.get("val_loss_train_mode") if last_eval else None,
            wall_time_s=self.speed.run_seconds(), exit_code=exit_code, checkpoint=self.last_checkpoint,
            wandb_files=self.wandb.files if self.wandb else None)
        if self.rank == 0:
            entropy = unigram_entropy(self.train_ds, cfg.model.padded_vocab_size(cfg.parallel.tp))
            if entropy is not None:
                summary["unigram_entropy"] = entropy
            write_summary(cfg.run_dir / "summary.json", summary)
        self._emit("on_train_end", summary)
        self.summary = summary


def run(cfg: RunConfig) -> int:
    trainer = Trainer(cfg)
    failed = True
    try:
        trainer.setup()
        failed = False
        return trainer.fit()
    finally:
        trainer.release(failed)
