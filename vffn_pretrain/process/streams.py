"""A command goes on when whoever reads its output goes away (`vffn-pretrain ... | head`, a closed terminal
pipe, a log collector that died).

Python ignores SIGPIPE, so the next `print` raises BrokenPipeError wherever it happens to be: inside the data
set-up, a checkpoint save or an evaluation, where it would be taken for a failure of that step and lose the run.
`survive_closed_output()` wraps standard output and error so that, from the first write that finds the reader
gone, that stream's file descriptor points at /dev/null and the command carries on: training continues, files
are written, the exit code is what it would have been. What was printed after that moment is lost (the run's
metrics.jsonl and summary.json are not).
"""

from __future__ import annotations

import os
import sys


class SurvivingStream:
    """A text stream whose writes and flushes never raise BrokenPipeError: after the first, the stream's file
    descriptor is redirected to /dev/null. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard_from_now_on()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard_from_now_on()

    def _discard_from_now_on(self) -> None:
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)
        try:
            self._stream.flush()  # what was still buffered goes to /dev/null too
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def survive_closed_output() -> None:
    """Wrap sys.stdout and sys.stderr (once; streams without a file descriptor, e.g. a test's capture, are
    left alone)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, SurvivingStream):
            continue
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        setattr(sys, name, SurvivingStream(stream))
