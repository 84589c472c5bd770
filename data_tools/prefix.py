"""The files of an indexed dataset ``PREFIX`` (``PREFIX.bin``, ``PREFIX.idx``, the report
``PREFIX.report.json``) and the token dtype. Free of megatron-core imports, for the modules that only need
names (reports, checks)."""

from __future__ import annotations

import os

import numpy as np


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.bin"


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.idx"


def report_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.report.json"


def existing_files(prefix: str | os.PathLike) -> list[str]:
    """The files of ``prefix`` that already exist (.bin, .idx, report)."""
    return [p for p in (bin_path(prefix), idx_path(prefix), report_path(prefix)) if os.path.exists(p)]


def smallest_dtype(vocab_size: int) -> type[np.number]:
    """The smallest unsigned dtype megatron-core can store that holds every id below ``vocab_size``."""
    if vocab_size <= 1 << 8:
        return np.uint8
    if vocab_size <= 1 << 16:
        return np.uint16
    return np.int32


class OutputExistsError(FileExistsError):
    """The output prefix already exists and overwriting was not asked for."""


def check_output(prefix: str | os.PathLike, overwrite: bool) -> None:
    """Raise OutputExistsError if ``prefix`` exists and ``overwrite`` is false."""
    existing = existing_files(prefix)
    if existing and not overwrite:
        raise OutputExistsError(f"output prefix {prefix} already exists ({', '.join(existing)}); "
                                f"pass --overwrite to replace it")
