"""The callbacks the `logging.*` config asks for (rank 0 only)."""

from __future__ import annotations

import logging

import torch

from vffn_pretrain.training.callbacks.base import Callback
from vffn_pretrain.training.callbacks.console import ConsoleLogger
from vffn_pretrain.training.callbacks.metrics_file import MetricsFile
from vffn_pretrain.training.callbacks.tensorboard import TensorBoardLogger
from vffn_pretrain.training.callbacks.wandb_logger import WandbLogger

log = logging.getLogger(__name__)


def build_callbacks(cfg, wandb_id: str | None) -> tuple[list[Callback], WandbLogger | None]:
    """Console and metrics.jsonl always; wandb (continuing run `wandb_id` if given) and TensorBoard when enabled.
    Returns (callbacks, the wandb logger or None). A wandb that fails to start is a warning, not an error."""
    callbacks: list[Callback] = [ConsoleLogger(cfg.logging.progress_bar), MetricsFile(cfg.run_dir / "metrics.jsonl")]
    wandb = None
    if cfg.logging.wandb.enabled:
        w = cfg.logging.wandb
        try:
            system_metrics = torch.cuda.is_available() if w.system_metrics == "auto" else w.system_metrics
            wandb = WandbLogger(w.project, w.entity, w.mode, cfg.run_dir, cfg.run_name, wandb_id, cfg.raw,
                                system_metrics=system_metrics)
            callbacks.append(wandb)
        except Exception as e:  # noqa: BLE001 - logging must not cost the run
            log.warning("wandb disabled: %s", e)
    if cfg.logging.tensorboard:
        callbacks.append(TensorBoardLogger(cfg.run_dir / "tensorboard"))
    return callbacks, wandb
