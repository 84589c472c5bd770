"""A command goes on when whoever reads its output goes away (`vffn-pretrain ... | head`, a terminal that was
closed, a log collector that died).

Python ignores SIGPIPE, so the next `print` raises BrokenPipeError (EPIPE; a hung-up terminal gives EIO) wherever
it happens to be: inside the data set-up, a checkpoint save or an evaluation, where it would be taken for a
failure of that step and lose the run. `survive_closed_output()` wraps standard output and error so that, from
the first write that finds the reader gone, that stream's file descriptor points at /dev/null and the command
carries on: training continues, files are written, the exit code is what it would have been. What was printed
after that moment is lost (the run's metrics.jsonl and summary.json are not). Other write errors (a full disk
under a redirected log: ENOSPC) still raise; the trainer stops on them with the last good checkpoint.
"""

from __future__ import annotations

import errno
import os
import sys

READER_GONE = (errno.EPIPE, errno.EIO)


class SurvivingStream:
    """A text stream whose writes and flushes never fail because the reader went away: after the first such
    failure the stream's file descriptor is redirected to /dev/null. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            self._unless_reader_gone(e)
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            self._unless_reader_gone(e)

    def _unless_reader_gone(self, error: OSError) -> None:
        if error.errno not in READER_GONE:
            raise error
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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def survive_closed_output() -> None:
    """Wrap sys.stdout and sys.stderr (once; streams without a file descriptor, e.g. pytest's capsys, are left
    alone)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, SurvivingStream):
            continue
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        setattr(sys, name, SurvivingStream(stream))
