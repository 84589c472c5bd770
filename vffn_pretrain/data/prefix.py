"""The files of an indexed dataset ``PREFIX`` (``PREFIX.bin``, ``PREFIX.idx``, the report
``PREFIX.report.json``) and the token dtype: the one place that names them. A prefix is a path the suffixes are
appended to, never replaced: ``out/corpus.v2_text_document`` is ``out/corpus.v2_text_document.bin`` etc. Free of
megatron-core imports, for the modules that only need names (reports, checks)."""

from __future__ import annotations

import os

import numpy as np

from vffn_pretrain.outputs.apart import check_replaceable

# The first bytes of every megatron-core index file (.idx).
INDEX_MAGIC = b"MMIDIDX\x00\x00"


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.bin"


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.idx"


def report_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.report.json"


def strip_file_suffix(path: str) -> str:
    """The prefix of a path that names one of its two data files (``PREFIX.bin``, ``PREFIX.idx``: a common slip
    where a prefix is asked for); any other path unchanged."""
    for suffix in (bin_path(""), idx_path("")):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def prefix_files(prefix: str | os.PathLike) -> list[str]:
    """The files of ``prefix``: .bin, .idx, report."""
    return [bin_path(prefix), idx_path(prefix), report_path(prefix)]


def existing_files(prefix: str | os.PathLike) -> list[str]:
    """The files of ``prefix`` that already exist (.bin, .idx, report)."""
    return [p for p in prefix_files(prefix) if os.path.exists(p)]


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
    """Raise ValueError if ``prefix`` does not end in a file name (an empty prefix, a directory ending in /,
    which would write hidden ``.bin``/``.idx`` files), OutputExistsError if it exists and ``overwrite`` is false."""
    name = os.path.basename(os.fspath(prefix))
    if name in ("", ".", ".."):
        raise ValueError(f"output prefix {os.fspath(prefix)!r} must end in a file name (.bin, .idx and "
                         ".report.json are appended to it), e.g. {os.path.join(os.fspath(prefix), 'data')!r}")
    existing = existing_files(prefix)
    if existing and not overwrite:
        raise OutputExistsError(f"output prefix {prefix} already exists ({', '.join(existing)}); "
                                f"pass --overwrite to replace it")
    for path in existing:  # --overwrite replaces a dataset, never a file of another kind that has its name
        check_replaceable(path, ours=lambda p, prefix=prefix: _is_dataset_file(p, prefix),
                          what="a file of an indexed dataset", flag="--output-prefix")


def _is_dataset_file(path, prefix) -> bool:
    """Whether `path` (one of `prefix`'s files) is what vffn-data writes there: an index with megatron-core's
    header, a .bin next to such an index, a report with the reports' version and command."""
    def is_index(idx: str) -> bool:
        try:
            with open(idx, "rb") as f:
                return f.read(len(INDEX_MAGIC)) == INDEX_MAGIC
        except OSError:
            return False

    path = os.fspath(path)
    if path == report_path(prefix):
        import json

        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(report, dict) and {"report_version", "command"} <= set(report)
    return is_index(idx_path(prefix))
