"""Exit codes and the one-line exit of the command-line tools.

The codes are the README's contract: 0 done, 1 error, 2 bad config, usage or data, 3 saved and asking to be
requeued, 130 interrupted.
"""

from __future__ import annotations

import sys

EXIT_BAD_CONFIG = 2


def fail(prog: str, message: str, code: int, *, show: bool = True):
    """Print `prog: message` on stderr (unless `show` is false, e.g. on ranks other than 0) and exit `code`."""
    if show:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
