"""`train.*`, `checkpoint.*` and `logging.*` config groups."""

from __future__ import annotations

from dataclasses import dataclass, field

from vffn_pretrain.config.errors import ConfigError


def _positive_int(group: str, obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{group}.{name}", f"must be a positive integer, got {value!r}")


@dataclass
class TrainConfig:
    max_steps: int = 300
    global_batch_size: int = 16
    micro_batch_size: int = 8
    seq_length: int = 128
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.05
    lr_schedule: str = "cosine"
    wsd_decay_ratio: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    seed: int = 1234
    eval_interval: int = 100
    eval_iters: int = 4
    eval_at_start: bool = False  # evaluate once before a fresh run's first step (step 0)
    # Also evaluate in train mode: loop counts sampled as in training (the paper's loss is a training loss). Only
    # kinds with an adaptive loop head sample anything; for the others the record repeats val_loss.
    eval_train_mode: bool = False
    max_skipped_steps: int = 5
    init_from: str | None = None
    exit_interval: int | None = None  # stop (after saving) once this process has run this many steps

    def validate(self, dp_size: int) -> None:
        _positive_int("train", self, "max_steps", "global_batch_size", "micro_batch_size", "seq_length",
                      "eval_interval", "max_skipped_steps")
        if self.eval_iters < 0:
            raise ConfigError("train.eval_iters", f"must be >= 0, got {self.eval_iters}")
        if self.global_batch_size % (self.micro_batch_size * dp_size):
            raise ConfigError(
                "train.global_batch_size",
                f"{self.global_batch_size} is not divisible by train.micro_batch_size x DP = "
                f"{self.micro_batch_size} x {dp_size}",
            )
        if not self.lr > 0:
            raise ConfigError("train.lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("train.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.lr_schedule not in ("cosine", "wsd", "constant"):
            raise ConfigError("train.lr_schedule", f"must be cosine, wsd or constant, got {self.lr_schedule!r}")
        if not 0 < self.wsd_decay_ratio <= 1:
            raise ConfigError("train.wsd_decay_ratio", f"must be in (0, 1], got {self.wsd_decay_ratio}")
        if self.exit_interval is not None and (not isinstance(self.exit_interval, int) or self.exit_interval < 1):
            raise ConfigError("train.exit_interval", f"must be null or a positive integer, got {self.exit_interval!r}")
        if self.clip_grad < 0:
            raise ConfigError("train.clip_grad", f"must be >= 0, got {self.clip_grad}")


@dataclass
class CheckpointConfig:
    dir: str | None = None
    interval: int = 100
    keep: int = 3
    resume: bool = True
    # Write checkpoints in the background (training/async_save.py): a save blocks training only while the state
    # is staged; megatron-core's writer process writes it while training goes on.
    async_save: bool = False

    def validate(self) -> None:
        _positive_int("checkpoint", self, "interval", "keep")


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
    interval: int = 10
    stats_interval: int = 50
    progress_bar: str | bool = "auto"
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: bool = False

    def validate(self) -> None:
        _positive_int("logging", self, "interval", "stats_interval")
        if self.progress_bar not in ("auto", True, False):
            raise ConfigError("logging.progress_bar", f"must be auto, true or false, got {self.progress_bar!r}")
        if self.wandb.system_metrics not in ("auto", True, False):
            raise ConfigError("logging.wandb.system_metrics",
                              f"must be auto, true or false, got {self.wandb.system_metrics!r}")
        if self.wandb.mode not in ("auto", "online", "offline"):
            raise ConfigError("logging.wandb.mode", f"must be auto, online or offline, got {self.wandb.mode!r}")
