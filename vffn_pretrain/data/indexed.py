"""Opening megatron-core indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) with integrity checks.

megatron-core's ``IndexedDataset`` trusts its files: a truncated ``.bin`` maps fine and fails (or returns
garbage) only when a sample reaches the missing bytes, possibly hours into training. ``verify_prefix`` checks
the structure up front, in time linear in the index and without reading the token data:

* both files exist; the ``.idx`` header (magic, version, dtype code) is megatron-core's;
* the ``.idx`` size matches the counts in its header (it is not truncated or padded);
* document boundaries start at 0, never decrease and end at the sequence count; lengths are non-negative;
* the sequence pointers are consecutive for the dtype (each sequence starts where the previous ended);
* the ``.bin`` size equals the bytes the index describes.

Errors are ``CorruptDatasetError`` (a ``ValueError``) whose message names the file and what is wrong. Content
damage inside the ``.bin`` is not visible to a structural check; the sampled token-id check at start-up
(``vffn_pretrain.data.checks``) and ``vffn-data inspect --verify`` (checksum against the report) cover that.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from vffn_pretrain.data.prefix import INDEX_MAGIC, bin_path, idx_path

# The .idx layout, as written by megatron-core's _IndexWriter (megatron/core/datasets/indexed_dataset.py).
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8
# megatron-core's DType codes.
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
           8: np.uint16}


class CorruptDatasetError(ValueError):
    """An indexed dataset file is missing, truncated or inconsistent."""


@dataclass(frozen=True)
class PrefixInfo:
    prefix: str
    dtype: np.dtype
    num_sequences: int
    num_documents: int
    num_tokens: int
    bin_bytes: int
    idx_bytes: int


def _paths(prefix: str | os.PathLike) -> tuple[str, str]:
    return bin_path(prefix), idx_path(prefix)


def verify_prefix(prefix: str | os.PathLike) -> PrefixInfo:
    """Check the structure of an indexed dataset (see the module docstring) and describe it."""
    bin_path, idx_path = _paths(prefix)
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise CorruptDatasetError(f"{path}: file not found (an indexed dataset needs both .bin and .idx)")
    idx_bytes = os.path.getsize(idx_path)
    bin_bytes = os.path.getsize(bin_path)
    if idx_bytes < _HEADER_BYTES:
        raise CorruptDatasetError(f"{idx_path}: truncated index: {idx_bytes} bytes, shorter than the "
                                  f"{_HEADER_BYTES}-byte header")
    with open(idx_path, "rb") as f:
        header = f.read(_HEADER_BYTES)
    if header[:len(INDEX_MAGIC)] != INDEX_MAGIC:
        raise CorruptDatasetError(f"{idx_path}: not a megatron indexed dataset index (bad magic {header[:9]!r})")
    (version,) = struct.unpack("<Q", header[9:17])
    if version != 1:
        raise CorruptDatasetError(f"{idx_path}: unsupported index version {version}")
    code = header[17]
    if code not in _DTYPES:
        raise CorruptDatasetError(f"{idx_path}: unknown dtype code {code}")
    dtype = np.dtype(_DTYPES[code])
    n_seq, n_doc = struct.unpack("<QQ", header[18:34])
    expected = _HEADER_BYTES + n_seq * (4 + 8) + n_doc * 8
    if idx_bytes != expected:
        what = "truncated" if idx_bytes < expected else "has trailing bytes"
        raise CorruptDatasetError(
            f"{idx_path}: index {what}: {idx_bytes} bytes, expected {expected} for {n_seq} sequences and "
            f"{n_doc - 1 if n_doc else 0} documents"
        )
    if n_doc < 1:
        raise CorruptDatasetError(f"{idx_path}: document index is empty (it must start with 0)")

    mm = np.memmap(idx_path, mode="r", dtype=np.uint8)
    try:
        lengths = np.frombuffer(mm, dtype=np.int32, count=n_seq, offset=_HEADER_BYTES)
        pointers = np.frombuffer(mm, dtype=np.int64, count=n_seq, offset=_HEADER_BYTES + 4 * n_seq)
        docs = np.frombuffer(mm, dtype=np.int64, count=n_doc, offset=_HEADER_BYTES + 12 * n_seq)
        if docs[0] != 0 or docs[-1] != n_seq:
            raise CorruptDatasetError(f"{idx_path}: document index runs from {docs[0]} to {docs[-1]}, expected "
                                      f"0 to the sequence count {n_seq}")
        if n_doc > 1 and np.any(np.diff(docs) < 0):
            raise CorruptDatasetError(f"{idx_path}: document index is not monotonic")
        if n_seq and lengths.min() < 0:
            raise CorruptDatasetError(f"{idx_path}: negative sequence length at sequence "
                                      f"{int(np.argmax(lengths < 0))}")
        num_tokens = int(lengths.sum(dtype=np.int64))
        if n_seq:
            expected_ptr = np.zeros(n_seq, dtype=np.int64)
            np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=expected_ptr[1:])
            bad = np.flatnonzero(pointers != expected_ptr)
            if bad.size:
                raise CorruptDatasetError(f"{idx_path}: sequence pointers inconsistent with lengths from "
                                          f"sequence {int(bad[0])} on")
    finally:
        del mm
    expected_bin = num_tokens * dtype.itemsize
    if bin_bytes != expected_bin:
        what = "truncated" if bin_bytes < expected_bin else "longer than its index"
        raise CorruptDatasetError(f"{bin_path}: data file {what}: {bin_bytes} bytes, the index describes "
                                  f"{expected_bin} ({num_tokens} tokens of {dtype.name})")
    return PrefixInfo(str(prefix), dtype, n_seq, n_doc - 1, num_tokens, bin_bytes, idx_bytes)


def open_indexed_dataset(prefix: str | os.PathLike):
    """Verify ``prefix`` and open it with megatron-core's ``IndexedDataset`` (memory-mapped)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    verify_prefix(prefix)
    return IndexedDataset(str(prefix), multimodal=False, mmap=True)
