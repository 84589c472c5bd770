"""Training speed over each logging window: tokens/s, TFLOP/s per device, MFU and the ETA.

A window runs from one log record to the next and counts training time only: time spent saving a checkpoint
or evaluating (inside `paused()`) is left out, and so is the time the log record itself takes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from vffn_pretrain.training.throughput import Peak, mfu


@dataclass
class WindowSpeed:
    tokens_per_sec: float
    tflops_per_device: float
    mfu: float | str  # "unknown" without a known peak (training.throughput)
    elapsed_s: float  # since the run (this fit()) started
    eta_s: float


class Speedometer:
    def __init__(self, tokens_per_step: int, world_size: int, peak: Peak):
        self.tokens_per_step = tokens_per_step
        self.world_size = world_size
        self.peak = peak
        self.run_start = self.window_start = time.perf_counter()
        self.window_steps = 0

    def start_run(self) -> None:
        self.run_start = self.window_start = time.perf_counter()
        self.window_steps = 0

    def step_done(self) -> None:
        self.window_steps += 1

    def window_seconds(self) -> float:
        return time.perf_counter() - self.window_start

    def measure(self, window_s: float, flops_per_token: float, steps_left: int) -> WindowSpeed:
        """The speed of the current window, `window_s` seconds long, at `flops_per_token` executed."""
        tokens_per_sec = self.tokens_per_step * self.window_steps / max(window_s, 1e-9)
        tflops = flops_per_token * tokens_per_sec / self.world_size / 1e12
        return WindowSpeed(tokens_per_sec, tflops, mfu(tflops, self.peak.flops), self.run_seconds(),
                           steps_left * window_s / max(self.window_steps, 1))

    def new_window(self) -> None:
        self.window_start, self.window_steps = time.perf_counter(), 0

    def run_seconds(self) -> float:
        return time.perf_counter() - self.run_start

    @contextmanager
    def paused(self):
        """Time spent inside does not count towards the window."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - start
