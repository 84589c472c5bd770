"""Reading a Debian binary package (``.deb``) in Python, without dpkg.

A ``.deb`` is an ``ar`` archive whose members are ``debian-binary``, ``control.tar.{gz,xz,zst}`` and
``data.tar.{gz,xz,zst,bz2}``. :func:`read_control` returns the control fields (Package, Version, ...) and
:func:`iter_data_files` yields the regular files of the data archive as (path, bytes), path without the
leading ``./``. Anything else is a :class:`DebError` naming the file.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

AR_MAGIC = b"!<arch>\n"


class DebError(ValueError):
    """The file is not a readable .deb."""


def _members(path: Path) -> dict[str, bytes]:
    data = path.read_bytes()
    if not data.startswith(AR_MAGIC):
        raise DebError(f"{path}: not a .deb (no ar header)")
    members, pos = {}, len(AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DebError(f"{path}: corrupt ar member header at byte {pos}") from None
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def _tar(path: Path, members: dict[str, bytes], stem: str) -> tarfile.TarFile:
    for name, blob in members.items():
        if name.startswith(stem + ".tar"):
            if name.endswith((".zst", ".zstd")):
                import zstandard

                blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
            return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    raise DebError(f"{path}: no {stem}.tar.* member")


def read_control(path: str | Path) -> dict[str, str]:
    """The fields of the package's ``control`` file (continuation lines joined)."""
    path = Path(path)
    with _tar(path, _members(path), "control") as tar:
        for member in tar.getmembers():
            if member.name.lstrip("./") == "control":
                text = tar.extractfile(member).read().decode("utf-8", "replace")
                break
        else:
            raise DebError(f"{path}: control archive has no control file")
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields


def iter_data_files(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Regular files of the data archive, in archive order (symlinks and directories are skipped)."""
    path = Path(path)
    with _tar(path, _members(path), "data") as tar:
        for member in tar:
            if member.isfile():
                name = member.name[2:] if member.name.startswith("./") else member.name
                yield name, tar.extractfile(member).read()
