"""One trainer per run directory: `run_dir/vffn-pretrain.lock` holds the host and PID of the process that owns it.

Two trainers on one `run_dir` would write the same checkpoint directories and interleave `metrics.jsonl`. The
lock is taken by rank 0 before anything is written and removed when the run ends. A lock left by a process
that died (kill -9, the OOM killer) is taken over with a warning when its PID is gone on this host; a lock from
another host cannot be checked from here, so it is refused with instructions.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from vffn_pretrain.process.lifetime import pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = "vffn-pretrain.lock"


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock, or raise RunDirLocked naming the holder."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):  # a lost race re-reads the new holder
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    log.warning("%s is unreadable (a crash while writing it?); taking it over", self.path)
                elif holder.get("host") != me["host"]:
                    raise RunDirLocked(
                        f"{self.path.parent} is in use by PID {holder.get('pid')} on host {holder.get('host')} "
                        f"(since {holder.get('since')}); if that run is gone, remove {self.path}") from None
                elif isinstance(holder.get("pid"), int) and pid_alive(holder["pid"]) and holder["pid"] != me["pid"]:
                    raise RunDirLocked(
                        f"{self.path.parent} is in use by PID {holder['pid']} on this host ({me['host']}, since "
                        f"{holder.get('since')}): two trainers must not share a run_dir") from None
                else:
                    log.warning("taking over the lock of %s from PID %s, which is no longer running",
                                self.path.parent, holder.get("pid"))
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunDirLocked(f"could not take {self.path}: another process keeps taking it")

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is None or holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
