"""Loaded by every Python process of a `benchmarks/suite_census.py run` (this folder is put first on PYTHONPATH):
records the process's own CPU time, wall time, argv and the test that started it, at exit (atexit, and os._exit,
which multiprocessing children and `run_and_exit_quickly` use). A process killed by a signal records nothing."""

import atexit
import json
import os
import sys
import time

_START = time.time()
_LOG = os.environ.get("VFFN_CENSUS_LOG")


def _record() -> None:
    try:
        import multiprocessing

        child = multiprocessing.parent_process() is not None
    except Exception:
        child = False
    times = os.times()
    record = {"pid": os.getpid(), "argv": sys.argv[:4], "cpu_s": times.user + times.system,
              "wall_s": time.time() - _START,  # a forked child: since its parent's start
              "test": os.environ.get("PYTEST_CURRENT_TEST", ""),
              "xdist_worker": os.environ.get("PYTEST_XDIST_WORKER", ""), "multiprocessing_child": child}
    try:
        with open(_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        pass


if _LOG:
    atexit.register(_record)
    _real_exit = os._exit

    def _exit(code):
        atexit.unregister(_record)
        _record()
        _real_exit(code)

    os._exit = _exit
