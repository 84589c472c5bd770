"""Input files of the planner (calibrations, metrics, loop statistics), checked before they are read."""

from __future__ import annotations

import os
from pathlib import Path


def regular_file(path: str | Path, max_bytes: int) -> Path:
    """`path` if it is a readable regular file of at most max_bytes, else OSError/ValueError naming why (a
    directory, a device or FIFO that would never end, a file too large to be what it claims)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_file():
        raise IsADirectoryError(f"{path} is a directory") if path.is_dir() else ValueError(
            f"{path} is not a regular file")
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes >> 20} MiB")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path} is not readable")
    return path
