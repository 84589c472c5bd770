"""Callback hooks of the training loop."""

from __future__ import annotations

from typing import Any


class Callback:
    def on_train_start(self, info: dict[str, Any]) -> None:
        """Once, after set-up (and resume). `info`: run name, dirs, parameter and FLOP counts, start step."""

    def on_log(self, record: dict[str, Any]) -> None:
        """Every `logging.interval` steps: the training record (step, loss, lr, ...)."""

    def on_eval(self, record: dict[str, Any]) -> None:
        """After each evaluation: step, val_loss, val_ppl, val_mean_loops."""

    def on_checkpoint(self, record: dict[str, Any]) -> None:
        """A checkpoint became complete: step, checkpoint (its directory), checkpoint_blocking_s (the training time
        the save took) and checkpoint_write_s (a background save's write time while training went on; None for a
        synchronous save)."""

    def on_message(self, text: str) -> None:
        """A notable event (checkpoint saved, step skipped, ...)."""

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """Once, at the end: the run summary."""
