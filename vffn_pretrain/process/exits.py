"""Exit codes and the one-line exit of the command-line tools.

The codes are the README's contract: 0 done, 1 error, 2 bad config, usage or data, 3 saved and asking to be
requeued, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

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
