"""The whole run's configuration: Hydra's composed config validated into typed dataclasses.

`load_run_config(cfg, world_size)` runs before any heavy work (no process group, no model, no pipeline plan);
every error is a `ConfigError` naming the dotted key. `parallel.pipeline_layout=auto` stays "auto" here: the
trainer resolves it after the process group exists (`vffn_pretrain.planning.auto.resolve_auto_layout` on rank 0,
the result broadcast), then calls `validate_layout`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import build_group
from vffn_pretrain.config.moves import apply_moved_keys
from vffn_pretrain.config.system import SystemConfig
from vffn_pretrain.data.config import DataConfig
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.parallel.config import AUTO_LAYOUT, ParallelConfig
from vffn_pretrain.training.config import CheckpointConfig, LoggingConfig, TrainConfig, WandbConfig


@dataclass
class RunConfig:
    model: ModelConfig
    ffn: FFNConfig
    parallel: ParallelConfig
    system: SystemConfig
    data: DataConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    run_name: str
    run_dir: Path
    world_size: int
    raw: dict  # the resolved config as plain containers (saved with checkpoints and in run_dir/config.yaml)

    @property
    def dp_size(self) -> int:
        return self.parallel.data_parallel_size(self.world_size)

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoint_dir_of(self.checkpoint, self.run_dir)


def checkpoint_dir_of(checkpoint: CheckpointConfig, run_dir: Path) -> Path:
    """Where a run's checkpoints live: checkpoint.dir, or run_dir/checkpoints."""
    return Path(checkpoint.dir) if checkpoint.dir else run_dir / "checkpoints"


def _build(cls, group: str, values: Any):
    return build_group(cls, group, values, nested={"wandb": WandbConfig} if cls is LoggingConfig else None)


def resolve_run_dir(run_dir: str | None, run_name: str, multirun_dir: str | None = None) -> Path:
    """The run directory, identical on every rank: `run_dir` if set; else the multirun job's directory; else
    runs/<run_name>, suffixed with SLURM_JOB_ID under SLURM (a requeued job keeps its id, so it resumes)."""
    if run_dir:
        return Path(run_dir)
    if multirun_dir:
        return Path(multirun_dir)
    job = os.environ.get("SLURM_JOB_ID")
    return Path("runs") / (f"{run_name}-{job}" if job else run_name)


@dataclass
class ConfigGroups:
    model: ModelConfig
    ffn: FFNConfig
    parallel: ParallelConfig
    system: SystemConfig
    data: DataConfig
    train: TrainConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig


def resolved_config(cfg: DictConfig | dict) -> dict:
    """Hydra's config as plain containers, interpolations resolved, without the `hydra` group (a plain dict is
    taken as resolved, and copied)."""
    if isinstance(cfg, dict):
        return {k: v for k, v in copy.deepcopy(cfg).items() if k != "hydra"}
    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation or missing mandatory value
        raise ConfigError(getattr(e, "full_key", "config") or "config", str(e).splitlines()[0]) from None
    raw.pop("hydra", None)
    return raw


def validate_groups(raw: dict, world_size: int | None) -> ConfigGroups:
    """The config groups of `raw` (a resolved config), each key checked for its type and range and the keys
    against each other. Reads no file: `load_run_config` (the trainer) and `vffn-info` both call it.
    `world_size` None: the smallest world the parallel layout fits (data parallel size 1)."""
    apply_moved_keys(raw, {"system": SystemConfig})
    model = _build(ModelConfig, "model", raw.get("model"))
    ffn = _build(FFNConfig, "ffn", raw.get("ffn"))
    parallel = _build(ParallelConfig, "parallel", raw.get("parallel"))
    system = _build(SystemConfig, "system", raw.get("system"))
    try:
        data = DataConfig.from_dict(raw.get("data") or {})
    except ValueError as e:  # DataConfig's errors read "data.<key>: reason"
        key, _, reason = str(e).partition(": ")
        raise ConfigError(key, reason or str(e)) from None
    train = _build(TrainConfig, "train", raw.get("train"))
    checkpoint = _build(CheckpointConfig, "checkpoint", raw.get("checkpoint"))
    logging_cfg = _build(LoggingConfig, "logging", raw.get("logging"))

    parallel.validate_static()
    system.validate()
    dp = parallel.data_parallel_size(world_size or parallel.tp * parallel.pp * parallel.cp)
    model.validate(tp=parallel.tp)
    ffn.validate(d_ff=model.ffn_hidden_size, tp=parallel.tp, num_layers=model.num_layers)
    train.validate(dp)
    checkpoint.validate()
    logging_cfg.validate()
    stages = parallel.pp * (parallel.effective_vpp or 1)
    if parallel.pipeline_layout == AUTO_LAYOUT and stages > model.num_layers:
        raise ConfigError("parallel.pp", f"parallel.pp x parallel.vpp = {stages} pipeline chunks for "
                                         f"{model.num_layers} layers (model.num_layers); each chunk needs a layer")
    if parallel.pipeline_layout is None and parallel.pp > 1:
        if model.num_layers % stages:
            raise ConfigError(
                "model.num_layers",
                f"{model.num_layers} layers are not divisible by parallel.pp x parallel.vpp = {stages}; "
                "set parallel.pipeline_layout for uneven stages",
            )
    if system.recompute_granularity == "full" and system.recompute_num_layers > model.num_layers:
        raise ConfigError("system.recompute_num_layers",
                          f"{system.recompute_num_layers} is more than model.num_layers={model.num_layers}")
    if train.seq_length > model.max_position_embeddings:
        raise ConfigError("train.seq_length",
                          f"{train.seq_length} exceeds model.max_position_embeddings={model.max_position_embeddings}")
    if parallel.sp and train.seq_length % parallel.tp:
        raise ConfigError("train.seq_length", f"must be divisible by parallel.tp={parallel.tp} with parallel.sp")
    return ConfigGroups(model, ffn, parallel, system, data, train, checkpoint, logging_cfg)


def load_run_config(cfg: DictConfig | dict, world_size: int, multirun_dir: str | None = None) -> RunConfig:
    raw = resolved_config(cfg)
    known = {"model", "ffn", "parallel", "system", "data", "train", "checkpoint", "logging", "run_name", "run_dir"}
    for key in raw:
        if key not in known:
            raise ConfigError(key, f"unknown top-level key (known: {', '.join(sorted(known))})")
    for key in ("run_name", "run_dir"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(key, f"expected null or a non-empty string, got {value!r}")
    g = validate_groups(raw, world_size)
    model, ffn, parallel, system, data, train, checkpoint = (g.model, g.ffn, g.parallel, g.system, g.data,
                                                              g.train, g.checkpoint)
    run_name = str(raw.get("run_name") or f"{model.name}-{ffn.kind}")
    run_dir = resolve_run_dir(raw.get("run_dir"), run_name, multirun_dir)
    if parallel.pipeline_layout not in (None, AUTO_LAYOUT):
        validate_layout(parallel, model)
    # what megatron's schedules would refuse at the first step (for auto: the planned layout keeps parallel.vpp)
    dp = parallel.data_parallel_size(world_size)
    parallel.validate_schedule(train.global_batch_size // (train.micro_batch_size * dp))
    run_cfg = RunConfig(model, ffn, parallel, system, data, train, checkpoint, g.logging, run_name, run_dir,
                        world_size, raw)
    for key, path in (("run_dir", run_dir), ("checkpoint.dir", run_cfg.checkpoint_dir),
                      ("data.cache_dir", Path(data.cache_dir).expanduser())):
        _check_directory_path(key, path)
    return run_cfg


def _check_directory_path(key: str, path: Path) -> None:
    """A directory the run will create or reuse must not be, or lie under, a regular file, and its name must be
    one the file system takes (no component longer than it allows, say)."""
    for p in (path, *path.parents):
        try:
            exists = p.exists()
        except OSError as e:
            raise ConfigError(key, f"{path}: {e.strerror or e}") from None
        if exists:
            if not p.is_dir():
                what = "is" if p == path else f"lies under {p}, which is"
                raise ConfigError(key, f"{path} {what} a file, not a directory")
            return


def validate_layout(parallel: ParallelConfig, model: ModelConfig) -> None:
    """Check `parallel.pipeline_layout` (a layout string) against the model and set `parallel.vpp` from it."""
    # megatron's rules, read without importing megatron (tests/planning/test_layout.py holds it to megatron's own)
    from vffn_pretrain.planning import layout

    try:
        layout.read(parallel.pipeline_layout, parallel.pp, model.num_layers)
    except layout.LayoutError as e:
        raise ConfigError("parallel.pipeline_layout", f"{parallel.pipeline_layout!r}: {e}") from None
    implied = layout.virtual_stages(parallel.pipeline_layout, parallel.pp)
    if parallel.vpp is None:
        parallel.vpp = implied  # the layout string is the single source of the stage assignment
    elif parallel.vpp != implied:
        raise ConfigError("parallel.vpp", f"{parallel.pipeline_layout!r} implies {implied} virtual stages per "
                                          f"pipeline rank, but parallel.vpp={parallel.vpp}")
