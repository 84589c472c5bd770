"""How `make test` shares the tests between its pytest-xdist workers (`--dist loadscope`, with our scopes).

A worker is handed one *scope* at a time and runs its tests in order. Most tests are a scope of their own, so
both workers stay busy to the end (a whole file as one unit left one worker idle for minutes while the other
finished a long file). Tests stay together where running them apart costs or breaks something:

- everything listed in `KEEP_TOGETHER`: tests that share an outside resource (the one SLURM cluster: two of its
  jobs at once find no idle node) or an expensive session fixture (the TP2xPP2 checkpoints of tests/export);
- a file that defines a module-, class- or package-scoped fixture: on two workers it would be built twice.

Shared scopes go out first, largest first, so that no long unit starts at the end of the run; single tests follow
in collection order, which interleaves the heavy multi-rank tests with light ones.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

KEEP_TOGETHER = (
    "tests/launch/test_slurm.py",  # one SLURM cluster with two nodes
    "tests/export/",  # the session-scoped export checkpoints (tests/export/conftest.py)
)

_WIDE_FIXTURE = re.compile(r"""scope\s*=\s*["'](module|class|package)["']""")


@cache
def _has_wide_fixture(path: str, rootdir: str) -> bool:
    try:
        return bool(_WIDE_FIXTURE.search((Path(rootdir) / path).read_text()))
    except OSError:
        return False


def scope_of(nodeid: str, rootdir: str) -> str:
    """The unit a node id is handed out in: a `KEEP_TOGETHER` entry, its file, or the test itself."""
    path = nodeid.split("::", 1)[0]
    for entry in KEEP_TOGETHER:
        if path == entry or (entry.endswith("/") and path.startswith(entry)):
            return entry
    if _has_wide_fixture(path, rootdir):
        return path
    return nodeid


class OurScopes(LoadScopeScheduling):
    """`LoadScopeScheduling` with the scopes of `scope_of`. Its default order (scopes by number of tests, largest
    first; a stable sort, so single tests keep their collection order) is the order described above."""

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid, str(self.config.rootpath))
