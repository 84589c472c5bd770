"""The pretraining loop: `setup()` builds (or resumes) the run, `fit()` trains it to the end.

`fit()` is a loop over components, each in its own file: the step itself (`step.train_step`), the
divergence guard (`divergence`), speed and MFU (`speed`, `flops`), the checkpoint manager (`checkpointing`,
which also says when to save), the evaluator (`evaluator`, which also says when to evaluate), the end-of-run
summary (`summary`), stop signals at every phase (`signals`), the locks of the directories the run writes
(`run_lock`) and what a resume may change (`resume_check`). Side concerns (console,
metrics.jsonl, wandb, TensorBoard) are callbacks on rank 0; the math lives in the model; the parallel plumbing
in megatron-core and `vffn_pretrain.parallel`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from omegaconf import OmegaConf
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

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
from vffn_pretrain.training.callbacks.base import Callbacks
from vffn_pretrain.training.callbacks.build import build_callbacks
from vffn_pretrain.training.callbacks.wandb_logger import WandbLogger
from vffn_pretrain.training.checkpointing import (
    CheckpointManager,
    CheckpointSaveError,
    LoadedCheckpoint,
    SavedCheckpoint,
    saved_config,
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
from vffn_pretrain.training.rank0 import decided_by_rank0
from vffn_pretrain.training.resume_check import data_changes, dense_source_mismatch, model_changes
from vffn_pretrain.training.run_lock import CacheLock, RunDirectories, RunDirLocked, UnwritableDirectory
from vffn_pretrain.training.signals import (
    ENDED,
    EXIT_REQUEUE,
    FAILED,
    FINISHING,
    STOP,
    TRAINING,
    StoppedBeforeTraining,
    say,
)
from vffn_pretrain.training.speed import Speedometer
from vffn_pretrain.training.step import StepResult, train_step
from vffn_pretrain.training.summary import run_summary, unigram_entropy, write_summary
from vffn_pretrain.training.throughput import device_peak_flops

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DIVERGED = 2  # train.max_skipped_steps consecutive NaN/Inf steps; no step succeeded; a non-finite final loss


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
        self.dirs = RunDirectories([("run_dir", cfg.run_dir), ("checkpoint.dir", cfg.checkpoint_dir)])
        self.stop = STOP  # the process's stop signals; `setup` installs them unless vffn-pretrain's main did
        self._owns_signals = False
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
        self.callbacks = Callbacks([])
        self.wandb: WandbLogger | None = None
        self.info: dict = {}  # what the callbacks get at the start (parameter and FLOP counts, layout)
        # The latest window's per-layer loop histograms {layer number: counts}, saved with each checkpoint for
        # the pipeline planner (parallel.pipeline_layout=auto replans from them on resume).
        self.loop_hists: dict[str, list[float]] = {}
        # Progress
        self.step = self.start_step = 0
        self.consumed_samples = 0
        self.consumed_tokens = 0  # counted per step: a resume may change train.seq_length
        self.steps_succeeded = 0  # in this fit(): optimizer steps that were not skipped
        self.window_losses: list[float] = []  # finite losses since the last log record
        self.final_train_loss: float | None = None
        self.already_done: int | None = None  # nothing to train (the checkpoint is at train.max_steps): the exit code
        self.summary_missing = False  # at train.max_steps without a summary of its end: evaluate and write it
        self.summary: dict | None = None  # after fit()

    @property
    def last_checkpoint(self) -> Path | None:
        return self.ckpt.last if self.ckpt else None

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Collective. A stop signal during set-up stops it at the next phase boundary, every rank together
        (StoppedBeforeTraining); before the process group exists, at once."""
        self.stop.start_run()
        self._owns_signals = self.stop.install()
        try:
            self._setup()
        except BaseException:
            self._drop_signals()
            raise

    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.stop.phase = "start-up (joining the process group)"
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
        self.stop.immediate = False  # from now on the ranks can agree to stop
        self._phase("set-up (taking the run directories)", self._take_directories)
        self._phase("set-up (building the datasets)", self._build_data)
        self._phase("set-up (building the model)", self._build_model)
        self.ckpt = CheckpointManager(cfg.checkpoint_dir, keep=cfg.checkpoint.keep, interval=cfg.checkpoint.interval,
                                      async_save=cfg.checkpoint.async_save, on_saved=self._checkpoint_saved)
        self.layout = {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.effective_vpp,
                       "dp": self.dp_size, "world": self.world}
        loaded = self._phase("set-up (loading a checkpoint)", self._resume if cfg.checkpoint.resume
                             else self._refuse_fresh_start_over_checkpoints)
        if loaded is None:
            decided_by_rank0(self._refuse_fresh_start_over_results)
        if loaded is None and t.init_from:
            self._phase("set-up (loading train.init_from)", self._init_from_dense)
        self.start_step = self.step
        if self.rank == 0 and self.device.type == "cpu":
            self._report_cpu_threads(threads, others.busy_cores())
        recorded = decided_by_rank0(self._recorded_exit_code) if self.step >= t.max_steps else None
        # At train.max_steps without a summary of this step's end (none, one of an earlier part of the run, or one
        # of a stop or an error during the final evaluation or save): finish that, with no training. Beyond
        # train.max_steps (lowered below the checkpoint) a summary of this step stands as it is.
        self.summary_missing = self.step >= t.max_steps and (
            recorded is None or (recorded not in (EXIT_OK, EXIT_DIVERGED) and self.step == t.max_steps))
        if self.summary_missing:
            why = ("has no summary.json of this step (the run stopped before writing it)" if recorded is None else
                   f"has a summary.json of a run that ended with exit code {recorded} before it finished")
            self._print(f"vffn-pretrain: {self.last_checkpoint} is at step {self.step} but {cfg.run_dir} {why}: "
                        "evaluating and writing the summary, no training")
        elif self.step >= t.max_steps:
            self.already_done = EXIT_DIVERGED if recorded == EXIT_DIVERGED else EXIT_OK  # never "requeue me"
            failed = (f" (it did not succeed: its summary.json says exit code {recorded}; to train its last steps "
                      "again, move the newest checkpoints away)") if recorded == EXIT_DIVERGED else ""
            self._print(f"vffn-pretrain: nothing to train: {self.last_checkpoint} is at step {self.step} and "
                        f"train.max_steps={t.max_steps}; summary.json, metrics.jsonl and the checkpoints are left "
                        f"as they were{failed} (raise train.max_steps to train on)")
            return
        if self.rank == 0:  # only now: a run that fails to start leaves no config behind
            _write_atomically(cfg.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg.raw)))
        self.train_iter = self._loader(self.train_ds, self.consumed_samples, cycle=False)
        self.evaluator = Evaluator(t, has_valid_data=self.valid_ds is not None)
        shapes = model_shapes(cfg)  # the counting shapes of this run, from its config
        self.flops = RunFlops.for_run(cfg, shapes, self.device.type)
        self.speed = Speedometer(t.global_batch_size * t.seq_length, self.world, device_peak_flops())
        self.info = self._run_info(counting.count_params(*shapes))
        if self.rank == 0:
            wandb_id = loaded.common.get("wandb_id") if loaded else None  # a resumed run continues its wandb run
            callbacks, self.wandb = build_callbacks(cfg, wandb_id)
            self.callbacks = Callbacks(callbacks)
            self._emit("on_train_start", self.info)

    def _read_summary(self) -> dict | None:
        """run_dir/summary.json as a dict, None when there is none or it cannot be read."""
        try:
            summary = json.loads((self.cfg.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def _recorded_exit_code(self) -> int | None:
        """The exit code run_dir/summary.json records for this step, or None when there is none (missing,
        unreadable, written at another step: an earlier part of the run). Running a finished run again keeps its
        outcome: a failed run (EXIT_DIVERGED) stays failed, and one that stopped during its final evaluation
        (EXIT_REQUEUE, EXIT_ERROR) is not finished."""
        summary = self._read_summary() or {}
        recorded = summary.get("exit_code")
        if summary.get("steps") != self.step or not isinstance(recorded, int) or isinstance(recorded, bool):
            return None
        return recorded

    def _recorded_final_train_loss(self) -> float | None:
        """The training loss metrics.jsonl records for this step (its last such record), None when none does."""
        from vffn_pretrain.training.callbacks.metrics_file import records

        loss = None
        for record in records(self.cfg.run_dir / "metrics.jsonl"):
            if record.get("step") == self.step and "loss" in record:
                loss = record["loss"]
        try:
            return float(loss) if loss is not None and not isinstance(loss, bool) else None
        except (TypeError, ValueError):  # not a number
            return None

    def _phase(self, name: str, work):
        """Run one set-up step; then every rank stops together if a stop signal came (to any rank) meanwhile."""
        self.stop.phase = name
        result = work()
        if self._agree(self.stop.requested):
            raise StoppedBeforeTraining(self.stop.signal_name or "a stop signal (to another rank)",
                                        self.stop.arrived_in or name)
        return result

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
        if plan.note:
            log.warning("cpu: %s", plan.note)
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
        RNG (the wandb run id saved with it is in its `common`). One that holds another model is refused (see
        `_check_resumable`)."""
        if self.rank == 0:
            for partial in self.ckpt.sweep_partial_saves():
                log.warning("removed %s, a checkpoint save that was cut short", partial)
        try:
            loaded = self.ckpt.load_latest(self.ddp, self.optimizer, self.layout, check=self._check_resumable)
        except LayoutRefused as e:  # an optimizer state this run cannot take (training/optimizer_layouts.py)
            raise ConfigError(e.key, str(e)) from None
        if loaded is not None:
            common = loaded.common
            self.step, self.consumed_samples = int(common["step"]), int(common["consumed_samples"])
            saved_train = (common.get("config") or {}).get("train") or {}
            saved_seq = saved_train.get("seq_length", self.cfg.train.seq_length)
            self.consumed_tokens = int(common.get("consumed_tokens", self.consumed_samples * saved_seq))
            self.scheduler.load_state_dict(common["scheduler"])
            old_steps = saved_train.get("max_steps")
            if (old_steps is not None and int(old_steps) != self.cfg.train.max_steps and self.rank == 0
                    and self.step < self.cfg.train.max_steps):
                log.warning(schedule_change_message(self.scheduler, self.optimizer, self.cfg.ffn, self.step,
                                                    int(old_steps), self.cfg.train.max_steps))
        return loaded

    def _check_resumable(self, common: dict) -> None:
        """Rank 0, before a checkpoint's weights are read: refuse one saved with another model (a MODEL key
        differs) unless checkpoint.allow_model_change; warn when the data changed (a DATA key)."""
        saved = common.get("config")
        if not isinstance(saved, dict):
            return  # saved without its config: nothing to compare
        cfg = self.cfg
        changed = model_changes(saved, cfg.model, cfg.ffn, step=int(common.get("step", 0) or 0))
        if changed and not cfg.checkpoint.allow_model_change:
            raise ConfigError("model", f"the checkpoint to resume was saved with another model: {'; '.join(changed)}"
                                       ". Resume with the saved values, start anew in another run_dir (or "
                                       "checkpoint.dir), or set checkpoint.allow_model_change=true to load it into "
                                       "the changed model")
        if changed:
            log.warning("checkpoint.allow_model_change=true: resuming a checkpoint of another model (%s); the "
                        "weights the two share are loaded", "; ".join(changed))
        data = data_changes(saved, cfg.data, cfg.train)
        if data:
            log.warning("resuming with other data than the checkpoint's run (%s): the samples from here on are "
                        "not the ones the original run would have seen, some may repeat or be skipped; token "
                        "counts go on from the checkpoint's", "; ".join(data))

    def _refuse_fresh_start_over_checkpoints(self) -> None:
        """checkpoint.resume=false in a checkpoint.dir that holds checkpoints: a fresh start would save among
        them, and pruning would keep the other run's newer steps and delete this run's."""
        def check() -> None:
            newest = self.ckpt.latest()
            if newest is not None:
                raise ConfigError("checkpoint.resume", f"false, but {self.ckpt.root} holds checkpoints of another "
                                                       f"run (newest {newest.name}); start anew in another "
                                                       "checkpoint.dir (or run_dir), or move them away")
        decided_by_rank0(check)

    def _refuse_fresh_start_over_results(self) -> None:
        """A fresh start (no checkpoint loaded) in a run_dir whose summary.json records a run that trained steps
        and succeeded or saved (exit 0 or 3): its metrics and summary would be replaced by this run's, while its
        checkpoints are elsewhere (checkpoint.dir changed, or moved away). A run that failed (exit 1, 2, 130)
        may start again in place: that is how a diverged run is retried."""
        recorded = self._read_summary() or {}
        try:
            steps, code = int(recorded.get("steps") or 0), recorded.get("exit_code")
        except (TypeError, ValueError):
            return
        if steps <= 0 or code not in (EXIT_OK, EXIT_REQUEUE):
            return
        results = (f"{self.cfg.run_dir} holds the results of a run that trained {steps} steps (summary.json, "
                   "metrics.jsonl): starting anew would replace them")
        if not self.cfg.checkpoint.resume:
            raise ConfigError("checkpoint.resume", f"false, but {results}; start anew in another run_dir")
        raise ConfigError("checkpoint.dir", f"{self.cfg.checkpoint_dir} holds no checkpoint to resume, but {results}. "
                                            "Point checkpoint.dir at that run's checkpoints, or choose another run_dir")

    def _init_from_dense(self) -> None:
        """Continued pretraining: train.init_from names a dense checkpoint of this model's shape to start from."""
        from vffn_pretrain.training.convert import load_dense_into, resolve_checkpoint

        path = self.cfg.train.init_from

        def source() -> str:
            try:
                ckpt = resolve_checkpoint(path)
            except FileNotFoundError as e:
                raise ConfigError("train.init_from", f"{path}: {str(e).split(': ', 1)[-1]}") from None
            saved = saved_config(ckpt)
            mismatch = dense_source_mismatch(saved, self.cfg.model) if saved else []
            if mismatch and not self.cfg.checkpoint.allow_model_change:
                raise ConfigError("train.init_from", f"{ckpt} holds another model than this run's dense "
                                                     f"counterpart: {'; '.join(mismatch)}")
            return str(ckpt)

        ckpt = decided_by_rank0(source)
        try:
            load_dense_into(ckpt, self.ddp, self.cfg)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - any reason it does not load: one line
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError("train.init_from", f"{ckpt} cannot be loaded into this model: {first}") from None

    # ------------------------------------------------------------------------------------------------ guards
    def _take_directories(self) -> None:
        """Rank 0 creates run_dir and checkpoint.dir and locks both; every rank raises the same error if that
        fails (RunError: another trainer holds one; ConfigError: one cannot be written)."""
        def take() -> None:
            try:
                self.dirs.take()
            except RunDirLocked as e:
                raise RunError(str(e)) from None
            except UnwritableDirectory as e:
                raise ConfigError(e.key, e.strerror) from None
        decided_by_rank0(take)

    def release(self, failed: bool) -> None:
        """Drop the directory locks; after a failed start, remove the directories this run created while they
        are empty. Stop handling the signals if `setup` installed that."""
        if self.ckpt is not None:
            self.ckpt.finish_deletes()  # pruned checkpoints are gone before another run may take the directory
        self.dirs.release(failed)
        self._drop_signals()

    def _drop_signals(self) -> None:
        if self._owns_signals:
            self.stop.restore()
            self._owns_signals = False

    # ------------------------------------------------------------------------------------------------ data
    def _build_data(self) -> None:
        """The datasets; a data problem (missing or damaged prefix, empty dataset, tokenizer mismatch) is a
        ConfigError naming the data key, raised on every rank. Rank 0 holds the data cache's writer lock
        meanwhile (it may tokenize the bundled corpus or build sample indices there)."""
        from vffn_pretrain.data.builder import remove_torn_index_files

        cfg = self.cfg
        cache = CacheLock(Path(cfg.data.cache_dir).expanduser())

        def take_cache() -> None:
            try:
                held = cache.acquire(should_stop=lambda: self.stop.requested, say=self._print)
            except OSError as e:
                raise ConfigError("data.cache_dir", f"{cache.path.parent} cannot be written ({e.strerror or e})") \
                    from None
            for path in remove_torn_index_files(cfg.data) if held else []:
                log.warning("removed %s, a sample index cut off while being written; it is built again", path)

        decided_by_rank0(take_cache)
        if self._agree(self.stop.requested):
            cache.release()
            return  # the phase boundary stops the run
        try:
            self._build_datasets()
        finally:
            cache.release()

    def _build_datasets(self) -> None:
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
        except (ValueError, OSError) as e:
            raise self._data_error(e, "data.tokenizer") from None
        try:
            self.train_ds, self.valid_ds, _ = build_datasets(
                cfg.data, seq_length=t.seq_length, seed=cfg.data.seed if cfg.data.seed is not None else t.seed,
                num_samples=num_samples, tokenizer=self.tokenizer,
                padded_vocab_size=cfg.model.padded_vocab_size(cfg.parallel.tp))
        except Exception as e:  # noqa: BLE001 - megatron-core wraps a failed write of its indices in an Exception
            if isinstance(e, (ValueError, OSError)):
                raise self._data_error(e, "data.tokenizer" if "okenizer" in str(e) else "data.paths") from None
            if isinstance(e.__cause__, OSError):  # "Failed to write dataset materials to the data cache ..."
                raise self._data_error(e.__cause__, "data.cache_dir") from None
            raise
        if t.eval_iters > 0 and self.valid_ds is None and self.rank == 0:
            log.warning("no validation data (data.split=%r gives the valid split no documents, or data.valid_paths "
                        "is unset): evaluation is skipped; set train.eval_iters=0 to silence this", cfg.data.split)

    def _data_error(self, e: ValueError | OSError, key: str) -> ConfigError:
        """The ConfigError for a data problem: the key its message starts with (`data.paths: ...`), else
        data.cache_dir for a file in the data cache that cannot be written (a full disk said so), else `key`."""
        named, sep, reason = str(e).partition(": ")
        if sep and named.startswith(("data.", "train.")):
            return ConfigError(named, reason)
        if isinstance(e, OSError):
            cache = str(Path(self.cfg.data.cache_dir).expanduser().resolve())
            where = str(getattr(e, "filename", "") or "")
            if key == "data.cache_dir" or where.startswith(cache):
                full = "the disk is full: " if e.errno == errno.ENOSPC else ""
                return ConfigError("data.cache_dir", f"{full}{where or cache} cannot be written "
                                                     f"({e.strerror or e})")
        return ConfigError(key, str(e))

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
        self.callbacks.emit(hook, payload)

    def _print(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def _say(self, text: str) -> None:
        self._emit("on_message", text)

    def _agree(self, flag: bool) -> bool:
        """Collective: true on every rank when `flag` is true on any."""
        return self._agree_each(flag)[0]

    def _agree_each(self, *flags: bool) -> tuple[bool, ...]:
        """Collective, one all-reduce: each flag true on every rank when it is true on any."""
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    # ------------------------------------------------------------------------------------------------ the loop
    def fit(self) -> int:
        """Train from `step` to train.max_steps (or a stop); returns the exit code. Writes the summary."""
        t = self.cfg.train
        if self.already_done is not None:
            self._end()
            return self.already_done
        self._start_fit()
        if self.summary_missing:  # no step is trained: the final training loss is the one the records hold
            self.final_train_loss = decided_by_rank0(self._recorded_final_train_loss)
        exit_code = EXIT_OK
        try:
            if self.evaluator.should_evaluate_at_start(self.step) or (
                    self.summary_missing and self.evaluator.should_evaluate(self.step, t.max_steps)):
                with self.speed.paused():
                    self.evaluate()
                stop_code = self._stop_code()  # a stop signal during it: the evaluation was abandoned
                if stop_code is not None:
                    exit_code = stop_code
            while exit_code == EXIT_OK and self.step < t.max_steps:
                self.stop.phase = TRAINING
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
                stop_code = self._stop_code()
                if stop_code is not None:
                    exit_code = stop_code
                    break
            self.ckpt.wait()
            if exit_code == EXIT_OK:
                exit_code = self._check_outcome()
            self.stop.phase = FINISHING
            self.finish(exit_code)
        except CheckpointSaveError as e:
            # A full disk, say: older checkpoints are intact. Say so in one line and still write the summary.
            self._say(f"error: {e}")
            self.finish(EXIT_ERROR)
            exit_code = EXIT_ERROR
        except BaseException:
            self.ckpt.finish_after_error()  # a failing evaluation must not cost the checkpoint in flight either
            raise
        self._end()
        return exit_code

    def _end(self) -> None:
        """The run is over: a stop signal from now on changes nothing; the next command on these directories may
        take them."""
        self.stop.phase = ENDED
        self.release(failed=False)

    def _start_fit(self) -> None:
        self.speed.start_run()
        self.guard.reset()
        self.window_losses, self.final_train_loss, self.steps_succeeded = [], None, 0
        self.evaluator.last = None

    def _check_outcome(self) -> int:
        """EXIT_OK, or EXIT_DIVERGED (with one line) when this run trained steps of which none succeeded, or the
        final validation or training loss is not finite: such a run did not succeed."""
        last_eval = self.evaluator.last or {}
        val_loss = last_eval.get("val_loss")
        if self.step > self.start_step and self.steps_succeeded == 0:
            problem = (f"no optimizer step succeeded in steps {self.start_step + 1}-{self.step} (every one had a "
                       f"NaN/Inf loss or gradient and was skipped); the model is that of step {self.start_step}. "
                       "Too high a train.lr or a vocab/tokenizer mismatch are the usual causes.")
        elif val_loss is not None and not np.isfinite(val_loss):
            problem = f"the final validation loss at step {last_eval.get('step')} is {val_loss}"
        elif (self.step >= self.cfg.train.max_steps and self.final_train_loss is not None
              and not np.isfinite(self.final_train_loss)):  # at the end only: train.exit_interval stops mid-run
            problem = (f"the final training loss (step {self.step}) is {self.final_train_loss}: the last step was "
                       "skipped (NaN/Inf), the model is not trained to the end. Too high a train.lr is the usual "
                       "cause.")
        else:
            return EXIT_OK
        self._say(f"error: {problem}; exiting with {EXIT_DIVERGED}")
        if self.rank == 0:
            log.error(problem)
        return EXIT_DIVERGED

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
        self.consumed_tokens += t.global_batch_size * t.seq_length
        self.final_train_loss = result.loss  # the last step's, even a skipped one: its NaN must not pass for success
        if not result.skipped:
            self.steps_succeeded += 1
            self.window_losses.append(result.loss)
        self.speed.step_done()
        return result

    def _stop_code(self) -> int | None:
        """Stop early, after saving, when train.exit_interval steps are done (EXIT_OK), a stop signal came
        (EXIT_REQUEUE) or rank 0 could not write its logs (EXIT_ERROR), each agreed by every rank; None to go
        on."""
        t = self.cfg.train
        if t.exit_interval and self.step - self.start_step >= t.exit_interval and self.step < t.max_steps:
            self._save_unless_saved()
            self._say(f"train.exit_interval={t.exit_interval} reached at step {self.step}; run the same command "
                      "again to continue")
            return EXIT_OK
        signal_came, write_failed = self._agree_each(self.stop.requested, self.callbacks.write_error is not None)
        if write_failed:
            return self._stop_for_write_error()
        if signal_came:
            self._save_unless_saved()
            self._say(f"{self.stop.signal_name or 'stop signal'} received: saved {self.last_checkpoint}; exiting "
                      f"with {EXIT_REQUEUE} (requeue)")
            return EXIT_REQUEUE
        return None

    def _stop_for_write_error(self) -> int:
        """Rank 0 could not write its logs (a full disk): try to save, then stop with EXIT_ERROR."""
        try:
            self._save_unless_saved()
        except CheckpointSaveError as e:
            self._print(f"vffn-pretrain: {e}")
        if self.rank == 0:
            say(f"vffn-pretrain: error: stopped at step {self.step}: {self.callbacks.write_error}; last good "
                f"checkpoint: {self.last_checkpoint or 'none saved yet'}; free space and run the same command "
                "to resume")
        return EXIT_ERROR

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
            "consumed_tokens": self.consumed_tokens,
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
    def evaluate(self) -> dict | None:
        """Collective: evaluate now; the callbacks get the record. None when a stop signal cut it short (checked
        between validation batches, every rank together)."""
        self.stop.phase = f"evaluation at step {self.step}"
        # The model as the next step would train it: tau and the blend-in weight are functions of the step (at
        # step 0, before any train step has set them).
        ffn_state.set_training_step(self.ddp, self.step, self.cfg.train.max_steps)
        loader = []

        def micro_batches(i: int) -> list[dict]:
            if i == 0:  # every pass starts from the first validation batch: every pass scores the same batches
                loader[:] = [self._loader(self.valid_ds, 0, cycle=True)]
            return self._micro_batches(loader[0], -1 - i)

        record = self.evaluator.evaluate(self.step, self.ddp, self.optimizer, micro_batches,
                                         noise_seed=self.cfg.train.seed,
                                         stop=lambda: self._agree(self.stop.requested))
        if record is not None:
            self._emit("on_eval", record)
        return record

    # ------------------------------------------------------------------------------------------------ saving
    def save(self) -> None:
        """Collective: save a checkpoint of this step (with checkpoint.async_save, start writing it)."""
        self.stop.phase = f"saving checkpoint {self.step}"
        common = {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "consumed_tokens": self.consumed_tokens,
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
            eval_loop_mix=self.evaluator.loop_mix(), steps=self.step, tokens=self.consumed_tokens,
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
    except Exception:
        trainer.stop.phase = FAILED  # a stop signal from now on (torchrun's, after another rank died) saves nothing
        raise
    finally:
        trainer.release(failed)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
