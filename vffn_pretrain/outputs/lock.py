"""One writer per output: a lock file next to the output names the host and PID of the process writing it.

Two processes writing the same output (two `vffn-data tokenize` into one prefix, two trainers on one run
directory) would interleave or overwrite each other's files. The writer creates the lock file exclusively
(O_EXCL) before it writes anything and removes it when done; a second writer finds it and is refused, naming
the holder. A lock left by a process that died (kill -9, the OOM killer) is taken over, with a line, when its PID
is gone on this host; a lock from another host cannot be checked from here and is refused with instructions.
`verify()` checks again, at the moment of commit, that the lock still names this process, so an output is never
committed by a writer that lost its claim meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from vffn_pretrain.process.lifetime import pid_alive

log = logging.getLogger(__name__)


class OutputInUse(RuntimeError):
    """Another live process holds the lock of the output."""


def lock_path_for(output: str | os.PathLike) -> Path:
    """The lock file of an output file, directory or prefix: `OUTPUT.lock`, next to it."""
    return Path(os.fspath(output).rstrip("/") + ".lock")


class OwnerLock:
    """The lock file `path`, guarding `what` (named in messages); `sharing` says why two writers must not share
    it. `warn` reports a take-over (default: a logging warning)."""

    def __init__(self, path: str | os.PathLike, what: str, *, sharing: str = "two writers must not share it",
                 warn: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.what = what
        self.sharing = sharing
        self.warn = warn or log.warning
        self.held = False
        self.host = socket.gethostname()

    def holder(self) -> dict | None:
        """The holder's record, or None when the file is missing or unreadable."""
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    def _mine(self, holder: dict | None) -> bool:
        return holder is not None and holder.get("host") == self.host and holder.get("pid") == os.getpid()

    def acquire(self) -> OwnerLock:
        """Take the lock, or raise OutputInUse naming the holder. Returns self."""
        host = self.host
        for _ in range(3):  # a lost race re-reads the new holder
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    self.warn(f"{self.path} is unreadable (a crash while writing it?); taking it over")
                elif holder.get("host") != host:
                    raise OutputInUse(
                        f"{self.what} is in use by PID {holder.get('pid')} on host {holder.get('host')} (since "
                        f"{holder.get('since')}); if that process is gone, remove {self.path}") from None
                elif isinstance(holder.get("pid"), int) and holder["pid"] != os.getpid() and pid_alive(holder["pid"]):
                    raise OutputInUse(
                        f"{self.what} is in use by PID {holder['pid']} on this host ({host}, since "
                        f"{holder.get('since')}): {self.sharing}") from None
                else:
                    self.warn(f"taking over the lock of {self.what} from PID {holder.get('pid')}, which is no "
                              "longer running")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": host, "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
            self.held = True
            return self
        raise OutputInUse(f"could not take {self.path}: another process keeps taking it")

    def verify(self) -> None:
        """At the moment of commit: raise OutputInUse unless the lock still names this process. A lock file that
        was removed meanwhile (and not taken by anyone) is taken again."""
        holder = self.holder()
        if self._mine(holder):
            return
        if holder is None and not self.path.exists():
            self.held = False
            self.acquire()
            return
        raise OutputInUse(f"{self.what}: its lock {self.path} now names PID {holder and holder.get('pid')} on "
                          f"{holder and holder.get('host')}, not this process: another writer took it over; "
                          "nothing was committed")

    def release(self) -> None:
        if self.held:
            holder = self.holder()
            if holder is None or self._mine(holder):  # (unreadable: a crash of ours while writing it)
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OwnerLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_output(output: str | os.PathLike, label: str, prog: str) -> OwnerLock:
    """Take the lock of a tool's output (`OUTPUT.lock`, next to it; its directory is made if needed) and return
    it: `label` names the output in messages (`--out`), `prog` prefixes the take-over line. Release it with
    `release()` (or use it as a context manager) once the output is committed."""
    import sys

    path = lock_path_for(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = OwnerLock(path, f"{label} {output}", sharing="two commands must not write the same output",
                     warn=lambda message: print(f"{prog}: {message}", file=sys.stderr, flush=True))
    return lock.acquire()
