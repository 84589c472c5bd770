"""A tool stops the same way on Ctrl-C, SIGTERM and SIGHUP.

Every tool handles Ctrl-C (KeyboardInterrupt) by stopping what it started, removing its partial output and
exiting 130 with one line. SIGTERM (`kill`, a job's time limit, a closed SSH session's SIGHUP) would instead kill
the process on the spot: no clean-up, its children orphaned, no line. `interruptible()` makes those signals raise
`Interrupted` (a KeyboardInterrupt) in the main thread, so the one Ctrl-C path covers all three.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; `signal_name` says which (SIGINT for Ctrl-C)."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def interrupted(exc: BaseException) -> str:
    """"interrupted" for Ctrl-C (a plain KeyboardInterrupt), "interrupted by SIGTERM" (or SIGHUP) otherwise: the
    start of a tool's last line."""
    name = getattr(exc, "signal_name", "SIGINT")
    return "interrupted" if name == "SIGINT" else f"interrupted by {name}"


def _raise(signum, _frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def interruptible(signals=STOP_SIGNALS) -> Iterator[None]:
    """Within the block, `signals` raise Interrupted in the main thread; the previous handlers come back after
    it. Outside the main thread (a tool called from a worker thread) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
