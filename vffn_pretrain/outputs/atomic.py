"""Outputs appear whole or not at all, with the user's permissions, and what an interrupted write leaves behind
is cleaned up by the next run.

Everything is written under a temporary name next to its final path, `FINAL.partial-PID` (the PID of the
writer), and renamed into place when complete. A run killed mid-write (kill -9, a power cut) leaves its
`.partial-PID` behind; the next writer of the same output removes every partial whose process is gone
(`sweep_stale_partials`), and says so. Temporary files and directories are made with plain `open`/`mkdir`,
which honour the user's umask, never with `tempfile.mkstemp`/`mkdtemp`, whose 0600/0700 would be published.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from vffn_pretrain.process.lifetime import pid_alive

PARTIAL = ".partial-"


def partial_path(final: str | os.PathLike) -> Path:
    """The temporary name this process writes `final` under."""
    final = Path(final)
    return final.with_name(f"{final.name}{PARTIAL}{os.getpid()}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.remove(path)


def sweep_stale_partials(final: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[str]:
    """Remove `FINAL.partial-PID` files and directories whose process is gone (a killed run); returns the removed
    paths. Those of a live process (another writer) are left alone."""
    removed = []
    for path in glob.glob(glob.escape(os.fspath(final)) + PARTIAL + "*"):
        pid = path.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            _remove(path)
            removed.append(path)
            if warn is not None:
                warn(f"removed {path}, left by process {pid}, which is gone")
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` as `write_bytes_atomic` does."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through `partial_path(path)` and a rename: a reader (or a crash) never sees half a
    file, and a failed write (disk full) leaves the old file as it was and no partial."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, data, **dump_kwargs) -> None:
    """`data` as indented JSON (and a final newline), written as `write_text_atomic` does."""
    dump_kwargs.setdefault("indent", 2)
    dump_kwargs.setdefault("default", str)
    write_text_atomic(path, json.dumps(data, **dump_kwargs) + "\n")


def make_partial_dir(final: str | os.PathLike) -> Path:
    """A fresh `partial_path(final)` directory (the user's umask), after sweeping stale ones of `final`."""
    tmp = partial_path(final)
    if tmp.exists():
        _remove(str(tmp))
    tmp.mkdir()
    return tmp


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: str | os.PathLike) -> None:
    """Give every file and directory under `root` (itself included) the user's umask: libraries that write
    through `mkstemp` (safetensors) leave 0600 files behind."""
    mask = current_umask()
    for directory, _dirs, files in os.walk(root):
        os.chmod(directory, 0o777 & ~mask)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o100
                os.chmod(path, (0o777 if executable else 0o666) & ~mask)


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory `tmp` to `final` (with the user's umask), replacing an existing `final` only
    once `tmp` is complete (the old one is renamed aside first, so at every instant `final` is either the old or
    the new whole)."""
    tmp, final = Path(tmp), Path(final)
    apply_umask(tmp)
    old = None
    if os.path.lexists(final):
        old = final.with_name(f"{final.name}{PARTIAL}old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        _remove(str(old))
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
