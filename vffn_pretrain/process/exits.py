"""Exit codes and the one-line exit of the command-line tools.

The codes are the README's contract: 0 done, 1 error, 2 bad config, usage or data, 3 saved and asking to be
requeued, 130 interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Callable

EXIT_BAD_CONFIG = 2


def fail(prog: str, message: str, code: int, *, show: bool = True):
    """Print `prog: message` on stderr (unless `show` is false, e.g. on ranks other than 0) and exit `code`."""
    if show:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints its usage before an error and exits 2; the project's promise is one line (naming the
    problem and pointing at --help) and exit 2."""

    def error(self, message: str):
        fail(self.prog, f"{message} (see {self.prog} --help)", EXIT_BAD_CONFIG)


def run_and_exit_quickly(main: Callable[[], object]) -> None:
    """Run `main` (a command's whole body), then end the process with its exit code without tearing the
    interpreter down: after torch and megatron-core are loaded, freeing every module and object at exit takes
    seconds, which every launch, requeue and test pays. The exit handlers still run (logging's flush, the
    multiprocessing children's clean-up, wandb's), then standard output and error are flushed.

    The normal exit is kept before anything heavy was imported (`--help`, a config error), while a non-daemon
    thread still runs (it is waited for), and for an exception that is not SystemExit (its traceback is printed
    as usual). Called inside another call (launch/record_exit.py runs the trainer's module this way and records
    its code), it only runs `main`: the outer call exits."""
    global _running
    if _running:
        main()
        return
    _running = True
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    finally:
        _running = False
    if not any(name in sys.modules for name in HEAVY_MODULES) or any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)  # what sys.exit("message") does
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream (a pipe whose reader left)
            pass
    os._exit(code & 0xFF)


_running = False
# Modules after whose import the tear-down takes seconds.
HEAVY_MODULES = ("torch",)
