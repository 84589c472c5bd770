"""lm-eval's TaskManager without re-reading lm-eval's own task files on every `vffn-eval`.

lm-eval builds its index of tasks by parsing every YAML file it ships (about 15,000 names; 15-20 s of CPU)
each time a TaskManager is made, so a typo in `--tasks` took 20 s to report. The index of lm-eval's own task
directory depends only on the installed lm-eval, so it is kept in a cache file per lm-eval version and
directory; directories given with `--include-path` (the user's own tasks, which change) are always read afresh.
lm-eval merges the directories in order, later names overriding earlier ones; so does this.

The cache: `$XDG_CACHE_HOME/vffn-pretrain` (default `~/.cache/vffn-pretrain`), one pickle
`lm-eval-tasks-<version>-<hash of the directory>.pkl`. A damaged or unreadable cache is rebuilt; a cache that
cannot be written only costs the time. Relies on lm-eval's `TaskIndex.build(paths)` (lm_eval/tasks/_index.py,
lm-eval 0.4.10+); with any other lm-eval the plain TaskManager is used.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from unittest import mock


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vffn-pretrain"


def task_manager(include_path: list[str] | None):
    """A `lm_eval.tasks.TaskManager(include_path=...)`, with the index of lm-eval's own tasks from the cache."""
    from lm_eval.tasks import TaskManager

    try:
        from lm_eval.tasks import manager
        from lm_eval.tasks._index import TaskIndex
    except ImportError:  # another lm-eval layout: no cache
        return TaskManager(include_path=include_path)
    if getattr(manager, "TaskIndex", None) is not TaskIndex:
        return TaskManager(include_path=include_path)
    defaults = Path(manager.__file__).parent
    build = TaskIndex.build

    def cached_build(paths, **kwargs):
        index = {}
        for root in paths:
            if Path(root) == defaults and not kwargs:
                index.update(_cached_index(defaults, lambda: build([defaults])))
            else:
                index.update(build([root], **kwargs))
        return index

    with mock.patch.object(TaskIndex, "build", staticmethod(cached_build)):
        return TaskManager(include_path=include_path)


def _cached_index(directory: Path, build) -> dict:
    from importlib.metadata import version

    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    path = cache_dir() / f"lm-eval-tasks-{version('lm_eval')}-{key}.pkl"
    try:
        with open(path, "rb") as f:
            index = pickle.load(f)
        if isinstance(index, dict) and index:
            return index
    except Exception:  # noqa: BLE001 - missing, damaged or from another Python: rebuilt below
        pass
    index = build()
    _write_atomically(path, pickle.dumps(index))
    return index


def _write_atomically(path: Path, data: bytes) -> None:
    """Two commands writing it at once leave one whole file; a cache that cannot be written is skipped."""
    from vffn_pretrain.outputs.atomic import sweep_stale_partials, write_bytes_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_partials(path)
        write_bytes_atomic(path, data)
    except OSError:
        pass
