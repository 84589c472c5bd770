"""Helper processes exit when the process that started them dies.

A trainer killed with kill -9 (or by the OOM killer) cannot stop its children: megatron-core's checkpoint
writer starts a multiprocessing manager (a spawned server process, which in turn keeps multiprocessing's
resource tracker alive) and forks one writer process per file bucket, and `vffn-data tokenize` forks worker
processes. Left alone they would run forever (a forked writer whose parent is gone can block for good on a full
result pipe). `exit_with_parent()` starts a daemon thread in the child that ends it once its parent is gone (the
child is re-parented, so `os.getppid()` changes). Spawned children of a vffn program import this package while
they prepare (they re-import the parent's main module), which is where the watch starts for them; forked
children re-import nothing, so `watch_forked_children()` (called when the package is imported) starts the watch
in every child `os.fork()` makes. The resource tracker exits by itself once no live process holds its pipe.
A tool that starts vffn programs with subprocess (`vffn-study run` starts trainers) passes `child_env()`: the
child finds its starter's PID in `VFFN_PARENT_PID` when it imports this package and watches it; a trainer so
started gets SIGTERM when its starter dies (it saves a checkpoint and exits) and is killed, with its process
group, if it is still there `PARENT_GONE_GRACE_S` later.
"""

from __future__ import annotations

import os
import signal
import threading
import time

POLL_S = 0.5
PARENT_ENV = "VFFN_PARENT_PID"
PARENT_GONE_GRACE_S = 60.0
_started = False
_fork_hook_registered = False
_forking_pid: int | None = None


def exit_with_parent(poll_s: float = POLL_S, *, take_group: bool = False, parent: int | None = None,
                     first_signal: int | None = None, grace_s: float = PARENT_GONE_GRACE_S) -> None:
    """Start watching (once per process): when the parent process dies, exit at once (status 1).

    ``parent`` is the PID this process was started by; by default multiprocessing's record of it, else the
    current parent. Comparing with the PID the starter had (not with whatever ``getppid()`` says by the time the
    watch starts) matters: a child whose parent died while it was starting up is already re-parented, and
    would otherwise take its new parent for the one to watch and never exit.

    With ``take_group``, a process that leads its own process group (started with ``start_new_session``)
    kills the whole group instead, so that its own subprocesses, which do not watch it, go with it.

    With ``first_signal`` (e.g. SIGTERM), the process first sends itself that signal, so that its own handler can
    stop in order (a trainer saves a checkpoint), and is ended as above only if it is still there ``grace_s``
    later."""
    global _started
    if _started:
        return
    _started = True
    if parent is None:
        parent = _starter_pid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        if first_signal is not None:
            os.kill(os.getpid(), first_signal)
            time.sleep(grace_s)  # the process normally exits meanwhile, and this thread with it
        if take_group and os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)  # this process included
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def child_env(env: dict | None = None) -> dict:
    """The environment (default: this process's) for a vffn program this process starts with subprocess, so
    that the child watches this process (see the module docstring)."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def watch_parent_from_env() -> None:
    """Called when the package is imported: a process whose environment names its starter (`child_env`) watches
    it. The variable is removed, so that this process's own children do not take that PID for their parent."""
    value = os.environ.pop(PARENT_ENV, "")
    if not value.isdigit():
        return
    starter = int(value)
    if os.getppid() != starter and pid_alive(starter):
        return  # started through something in between (a shell, a wrapper): not ours to watch
    # (a starter that is already gone: the watch ends this process at once)
    exit_with_parent(parent=starter, take_group=True, first_signal=signal.SIGTERM)


def _starter_pid() -> int:
    import multiprocessing

    starter = multiprocessing.parent_process()  # set in spawned and forked multiprocessing children
    return starter.pid if starter is not None and starter.pid else os.getppid()


def watch_forked_children() -> None:
    """Make every child this process forks from now on (multiprocessing's fork context, megatron-core's file
    writers, `os.fork`) exit when this process dies. subprocess's fork-exec does not run these hooks."""
    global _fork_hook_registered
    if _fork_hook_registered:
        return
    _fork_hook_registered = True
    os.register_at_fork(before=_note_forking_pid, after_in_child=_watch_new_parent)


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()  # the child inherits this value: the PID of the process that forked it


def _watch_new_parent() -> None:
    global _started
    _started = False  # the parent's watch thread did not survive the fork; the child watches its own parent
    exit_with_parent(parent=_forking_pid)


def is_multiprocessing_child() -> bool:
    """True in a process started by multiprocessing (spawn, forkserver or fork), also while a spawned child
    prepares: its name is set before it imports the parent's main module."""
    import multiprocessing

    return multiprocessing.current_process().name != "MainProcess"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists
