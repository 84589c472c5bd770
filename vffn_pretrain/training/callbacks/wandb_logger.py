"""Weights & Biases: offline unless an API key is configured; a resumed run continues the same wandb run
(its id is kept in the checkpoint). Sync offline runs later with `wandb sync <run_dir>/wandb/offline-run-*`."""

from __future__ import annotations

import logging
import netrc
import os
import uuid

from vffn_pretrain.training.callbacks.base import Callback

log = logging.getLogger(__name__)


def wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger(Callback):
    def __init__(self, project: str, entity: str | None, mode: str, run_dir, run_name: str, run_id: str | None,
                 config: dict, system_metrics: bool = True):
        import wandb

        if mode == "auto":
            mode = "online" if wandb_has_api_key() else "offline"
        self.mode = mode
        self._wandb = wandb
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), name=run_name,
                              id=run_id or uuid.uuid4().hex[:12], resume="allow", config=config,
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=not system_metrics,
                                                      x_disable_machine_info=not system_metrics))
        self.run_id = self.run.id

    def on_log(self, record):
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def on_eval(self, record):
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def on_train_end(self, summary):
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self.run.summary[key] = value
        self.run.finish()

    @property
    def files(self) -> str:
        return self.run.dir
