"""Stop signals: finish the step, save, exit 3.

SIGTERM / SIGUSR1 are what SLURM sends before preemption or the time limit (SIGUSR2 is submitit's); SIGINT is
Ctrl-C. The first one is recorded and the trainer stops at the next step boundary after saving. A second
SIGINT aborts at once (exit 130, like an unhandled Ctrl-C; the last complete checkpoint is intact); a second
SIGTERM is ignored, because torchrun sends one to every rank when another rank exits 3.

EXIT_REQUEUE (3) tells the launcher the run saved a checkpoint and wants to be requeued; the same command
resumes from it.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_REQUEUE = 3
EXIT_INTERRUPTED = 130


class StopRequest:
    """Records the first stop signal; the trainer polls `requested` at step boundaries."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)):
        self.signal_name: str | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                print("\nSIGINT: saving a checkpoint at the end of this step, then exiting (Ctrl-C again to abort "
                      "without saving)", file=sys.stderr, flush=True)
        elif signum == signal.SIGINT:
            print("second SIGINT: aborting without saving", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """For helper processes of the trainer (megatron-core's checkpoint-writer manager): SLURM sends SIGTERM or
    SIGUSR1 to every process of a job step, and a terminal sends Ctrl-C to its whole foreground group. The trainer
    saves on them; a helper that died of them would fail that very save. Helpers exit with the trainer anyway
    (`vffn_pretrain.process.lifetime`)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
