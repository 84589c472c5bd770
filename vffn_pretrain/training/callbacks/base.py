"""Callback hooks of the training loop, and `Callbacks`, which calls them and survives what they write failing."""

from __future__ import annotations

import errno
import os
from typing import Any

from vffn_pretrain.training.signals import say


class Callback:
    # A write error of an optional callback (the console: a closed terminal, a broken pipe) drops it and training
    # goes on; any other write error (metrics.jsonl, TensorBoard, a full disk anywhere) stops the run.
    optional = False

    def target(self) -> str:
        """What this callback writes to, for error messages."""
        return type(self).__name__
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


def stream_target(stream) -> str:
    """The file behind a stream (/proc/self/fd), or its name."""
    try:
        return os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except (OSError, ValueError, AttributeError):
        return getattr(stream, "name", repr(stream))


class Callbacks:
    """The run's callbacks, called in order. A callback whose write fails (OSError) is dropped, the failure is
    said in one line on stderr, and, unless the callback is optional and the disk is not full, kept in
    `write_error` for the trainer, which then saves and stops."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)
        self.write_error: str | None = None

    def emit(self, hook: str, payload) -> None:
        for c in list(self.callbacks):
            try:
                getattr(c, hook)(payload)
            except OSError as e:
                self.callbacks.remove(c)
                full = e.errno in (errno.ENOSPC, errno.EDQUOT)
                text = f"{'the disk is full' if full else 'cannot write'}: {c.target()}: [Errno {e.errno}] " \
                       f"{e.strerror or e}"
                if full or not c.optional:
                    self.write_error = self.write_error or text
                say(f"vffn-pretrain: error: {text}")
