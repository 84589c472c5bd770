"""`train.*`, `checkpoint.*` and `logging.*` config groups."""

from __future__ import annotations

from dataclasses import dataclass, field

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import DATA, MAX_SEED, check_fields, setting


@dataclass
class TrainConfig:
    max_steps: int = setting(300, ge=1)
    global_batch_size: int = setting(16, ge=1)
    micro_batch_size: int = setting(8, ge=1)
    seq_length: int = setting(128, ge=1, changes=DATA)
    lr: float = setting(2e-3, gt=0)
    min_lr_ratio: float = setting(0.1, ge=0, le=1)
    warmup_ratio: float = setting(0.05, ge=0, lt=1)
    lr_schedule: str = "cosine"
    wsd_decay_ratio: float = setting(0.2, gt=0, le=1)
    weight_decay: float = setting(0.1, ge=0)
    beta1: float = setting(0.9, ge=0, lt=1)
    beta2: float = setting(0.95, ge=0, lt=1)
    eps: float = setting(1e-8, gt=0)
    clip_grad: float = setting(1.0, ge=0)  # 0: no clipping
    seed: int = setting(1234, ge=0, le=MAX_SEED, changes=DATA)  # also the data order when data.seed is null
    eval_interval: int = setting(100, ge=1)
    eval_iters: int = setting(4, ge=0)
    eval_at_start: bool = False  # evaluate once before a fresh run's first step (step 0)
    # Also evaluate in train mode: loop counts sampled as in training (the paper's loss is a training loss). Only
    # kinds with an adaptive loop head sample anything; for the others the record repeats val_loss.
    eval_train_mode: bool = False
    max_skipped_steps: int = setting(5, ge=1)
    init_from: str | None = None
    exit_interval: int | None = setting(None, ge=1)  # stop (after saving) once this process has run this many steps

    def validate(self, dp_size: int) -> None:
        check_fields(self, "train")
        if self.global_batch_size % (self.micro_batch_size * dp_size):
            raise ConfigError(
                "train.global_batch_size",
                f"{self.global_batch_size} is not divisible by train.micro_batch_size x DP = "
                f"{self.micro_batch_size} x {dp_size}",
            )
        if self.lr_schedule not in ("cosine", "wsd", "constant"):
            raise ConfigError("train.lr_schedule", f"must be cosine, wsd or constant, got {self.lr_schedule!r}")
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError("train.init_from", "must be null or a checkpoint path, got an empty string")


@dataclass
class CheckpointConfig:
    dir: str | None = None
    interval: int = setting(100, ge=1)
    keep: int = setting(3, ge=1)
    resume: bool = True
    # Write checkpoints in the background (training/async_save.py): a save blocks training only while the state
    # is staged; megatron-core's writer process writes it while training goes on.
    async_save: bool = False
    # Resume even when a key that changes the model (a MODEL key, e.g. ffn.kind or model.hidden_size) differs
    # from the checkpoint's config: the weights the changed model shares with the checkpoint are loaded.
    allow_model_change: bool = False

    def validate(self) -> None:
        check_fields(self, "checkpoint")
        if self.dir is not None and not self.dir.strip():
            raise ConfigError("checkpoint.dir", "must be null or a directory path, got an empty string")


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "auto"
    project: str = "vffn-pretrain"
    entity: str | None = None
    # wandb's sampler of CPU/GPU/disk metrics runs beside the trainer; auto: on GPU machines only (on a small CPU
    # machine it competes with training for the cores).
    system_metrics: str | bool = "auto"


@dataclass
class LoggingConfig:
    interval: int = setting(10, ge=1)
    stats_interval: int = setting(50, ge=1)
    progress_bar: str | bool = "auto"
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: bool = False

    def validate(self) -> None:
        check_fields(self, "logging")
        if self.progress_bar not in ("auto", True, False):
            raise ConfigError("logging.progress_bar", f"must be auto, true or false, got {self.progress_bar!r}")
        if self.wandb.system_metrics not in ("auto", True, False):
            raise ConfigError("logging.wandb.system_metrics",
                              f"must be auto, true or false, got {self.wandb.system_metrics!r}")
        if self.wandb.mode not in ("auto", "online", "offline"):
            raise ConfigError("logging.wandb.mode", f"must be auto, online or offline, got {self.wandb.mode!r}")
