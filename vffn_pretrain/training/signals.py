"""SIGTERM / SIGUSR1 (what SLURM sends before preemption or the time limit; SIGUSR2 is submitit's): finish the
step, save, exit.

EXIT_REQUEUE (3) tells the launcher the run saved a checkpoint and wants to be requeued; the same command
resumes from it.
"""

from __future__ import annotations

import signal

EXIT_REQUEUE = 3


class StopRequest:
    """Records the first stop signal; the trainer polls `requested` at step boundaries."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)):
        self.signal_name: str | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
