"""The NaN/divergence policy: a step whose loss or gradients are not finite is skipped (the optimizer does not
step, `step.train_step` sees to that); `train.max_skipped_steps` such steps in a row stop the run (exit 2)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vffn_pretrain.training.step import StepResult

log = logging.getLogger(__name__)


class DivergenceGuard:
    """Counts skipped steps and says when to stop. `say(text)` reports to the user (the trainer's callbacks)."""

    def __init__(self, max_skipped_steps: int, say: Callable[[str], None]):
        self.max_skipped_steps = max_skipped_steps
        self.say = say
        self.skipped_total = 0  # over this fit(); reported as `skipped_steps` in metrics.jsonl
        self.skipped_in_a_row = 0

    def reset(self) -> None:
        self.skipped_total = self.skipped_in_a_row = 0

    def should_stop(self, step: int, result: StepResult, last_checkpoint: Path | None) -> bool:
        """Record the outcome of `step` (numbered from 1); True when the run has diverged and must stop."""
        if not result.skipped:
            self.skipped_in_a_row = 0
            return False
        self.skipped_total += 1
        self.skipped_in_a_row += 1
        self.say(f"step {step}: loss {result.loss} or gradient not finite; skipped ({self.skipped_in_a_row} in a row)")
        if self.skipped_in_a_row < self.max_skipped_steps:
            return False
        msg = (f"stopping: {self.skipped_in_a_row} consecutive steps had NaN/Inf loss or gradients "
               f"(train.max_skipped_steps={self.max_skipped_steps}) at step {step}. "
               f"Last good checkpoint: {last_checkpoint or 'none saved yet'}. A vocab/tokenizer mismatch or too "
               "high a train.lr are the usual causes.")
        self.say(msg)
        log.error(msg)
        return True
