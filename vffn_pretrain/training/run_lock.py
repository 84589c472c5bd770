"""One writer per directory a run writes.

`RunLock`: one trainer per run directory and per checkpoint directory. `<dir>/vffn-pretrain.lock` holds the
host and PID of the process that owns it (and its SLURM job). Two trainers on one `run_dir` would interleave
`metrics.jsonl`; two on one `checkpoint.dir` would overwrite and prune each other's checkpoints. The locks are
taken by rank 0 before anything is written and removed when the run ends. A lock left by a process that died
(kill -9, the OOM killer) is taken over with a warning when its PID is gone on this host, or when it was taken
by an earlier run of this same SLURM job (a requeued job runs again, perhaps on another node, only after its
earlier run ended); another host's lock cannot be checked from here, so it is refused with instructions.

`CacheLock`: one writer at a time in a data cache (`data.cache_dir`), which runs share: the second run waits
while the first tokenizes the bundled corpus or builds sample indices, then reads what it wrote. An advisory
`flock`, which the kernel drops when its holder dies.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from vffn_pretrain.outputs.lock import OutputInUse
from vffn_pretrain.process.lifetime import pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = "vffn-pretrain.lock"

RunDirLocked = OutputInUse  # another live process holds the run directory


def _slurm_job() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


class RunLock:
    """The lock of directory `directory`, named `key` (the config key) in messages."""

    def __init__(self, directory: str | Path, key: str = "run_dir"):
        self.path = Path(directory) / LOCK_NAME
        self.key = key
        self.held = False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock, or raise RunDirLocked naming the holder."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "slurm_job": _slurm_job(), "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0")}
        for _ in range(3):  # a lost race re-reads the new holder
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    log.warning("%s is unreadable (a crash while writing it?); taking it over", self.path)
                elif (me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"]
                      and holder.get("slurm_restart") != me["slurm_restart"]):
                    log.warning("taking over the lock of %s from an earlier run of SLURM job %s (PID %s on %s)",
                                self.path.parent, me["slurm_job"], holder.get("pid"), holder.get("host"))
                elif holder.get("host") != me["host"]:
                    raise RunDirLocked(
                        f"{self.path.parent} is in use by PID {holder.get('pid')} on host {holder.get('host')} "
                        f"(since {holder.get('since')}); if that run is gone, remove {self.path}") from None
                elif isinstance(holder.get("pid"), int) and pid_alive(holder["pid"]) and holder["pid"] != me["pid"]:
                    raise RunDirLocked(
                        f"{self.path.parent} is in use by PID {holder['pid']} on this host ({me['host']}, since "
                        f"{holder.get('since')}): two trainers must not share a {self.key}") from None
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


CACHE_LOCK_NAME = ".vffn-cache.lock"


class CacheLock:
    """Exclusive use of a cache directory while writing into it (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / CACHE_LOCK_NAME
        self._fd: int | None = None

    def acquire(self, should_stop: Callable[[], bool], say: Callable[[str], None], poll_s: float = 0.2) -> bool:
        """Wait for the lock; False if `should_stop()` turned true first, or if the directory cannot be written
        (a read-only cache can only be read: nothing to lock)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                log.info("data cache %s is read-only: using it without a lock", self.path.parent)
                return False
            raise
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    waiting = True
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    say(f"waiting for {holder} to finish writing the data cache {self.path.parent}")
                if should_stop():
                    os.close(fd)
                    return False
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RunDirectories:
    """The directories a run writes, taken together on rank 0: each is created (a directory that cannot be
    written is refused now, not at the first checkpoint save) and locked (`RunLock`); `release()` drops the
    locks and, after a failed start, removes the directories this run created while they are empty."""

    def __init__(self, directories: list[tuple[str, Path]]):
        self.directories = directories  # (config key, path), in the order taken
        self.locks: list[RunLock] = []
        self.created: list[Path] = []

    def take(self) -> None:
        """Raises RunDirLocked (another trainer holds one) or OSError naming the key (e.g. `checkpoint.dir`)."""
        seen = set()
        for key, path in self.directories:
            try:  # a name the file system refuses (too long, say) is that key's problem too
                if path.resolve() in seen:
                    continue
                seen.add(path.resolve())
                missing = [p for p in (path, *path.parents) if not p.exists()]
                path.mkdir(parents=True, exist_ok=True)
                self.created += reversed(missing)
                lock = RunLock(path, key)
                lock.acquire()
            except OSError as e:
                raise UnwritableDirectory(key, path, e) from None
            self.locks.append(lock)

    def release(self, failed: bool) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []
        if failed:
            for path in reversed(self.created):
                try:
                    path.rmdir()
                except OSError:
                    pass  # not empty: another writer's, or ours with something worth keeping
        self.created = []


class UnwritableDirectory(OSError):
    def __init__(self, key: str, path: Path, error: OSError):
        super().__init__(error.errno, f"{path} cannot be written ({error.strerror or error})")
        self.key = key
