"""Writing megatron-core indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) safely and in bounded memory.

``CompactIndexedDatasetBuilder`` is megatron-core's ``IndexedDatasetBuilder`` with two changes that keep memory
flat on large inputs, while writing the same bytes (a test compares against the stock builder):

* the per-sequence index lives in typed arrays (12 bytes per document) instead of Python lists of ints;
* the ``.idx`` sequence pointers are computed with one NumPy cumulative sum instead of a Python loop that
  materialises a list of every pointer at the end.

``AtomicIndexedWriter`` writes under temporary names (``PREFIX.bin.partial-PID``; the suffix means they never
form a loadable prefix, see ``vffn_pretrain.outputs.atomic``) and renames them into place only once both are
complete, so an interrupted run leaves no half-written prefix that looks valid, and an existing prefix is
untouched until the new one is ready. With the writer's lock (``outputs.lock``), the commit checks again that
this process still owns the prefix and that no prefix appeared meanwhile (without overwrite).
"""

from __future__ import annotations

import hashlib
import os
import sys
from array import array
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDatasetBuilder,
    _IndexReader,
    _IndexWriter,
)

from vffn_pretrain.data.hashing import sha256_file
from vffn_pretrain.data.prefix import (
    OutputExistsError,
    bin_path,
    check_output,
    idx_path,
    report_path,
    smallest_dtype,
)

__all__ = ["AtomicIndexedWriter", "CompactIndexedDatasetBuilder", "OutputExistsError", "smallest_dtype"]


class _VectorisedIndexWriter(_IndexWriter):
    """megatron-core's index writer, with the sequence pointers computed in NumPy (same values)."""

    def _sequence_pointers(self, sequence_lengths):
        lengths = np.asarray(sequence_lengths, dtype=np.int64)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1] * DType.size(self.dtype), out=pointers[1:])
        return pointers


class CompactIndexedDatasetBuilder(IndexedDatasetBuilder):
    """megatron-core's builder with a compact index, whole-chunk appends and a running SHA-256 of the .bin."""

    def __init__(self, bin_path: str, dtype: type[np.number]):
        super().__init__(bin_path, dtype=dtype)
        self.sequence_lengths = array("i")
        self.document_indices = array("q", [0])
        self.bin_sha256 = hashlib.sha256()
        self.num_tokens = 0

    def _write(self, data) -> None:
        self.bin_sha256.update(data)
        self.data_file.write(data)

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents of one sequence each: ``tokens`` is their concatenation, ``lengths`` their sizes."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        if int(np.sum(lengths, dtype=np.int64)) != tokens.size:
            raise ValueError("document lengths do not add up to the number of tokens")
        self._write(memoryview(tokens).cast("B"))
        start = len(self.sequence_lengths)
        self.sequence_lengths.frombytes(np.asarray(lengths, dtype=np.int32).tobytes())
        self.document_indices.frombytes(np.arange(start + 1, start + 1 + len(lengths), dtype=np.int64).tobytes())
        self.num_tokens += tokens.size

    def add_item(self, tensor, mode: int = 0) -> None:
        tokens = np.asarray(tensor, dtype=self.dtype)
        self._write(tokens.tobytes())
        self.sequence_lengths.append(tokens.size)
        self.num_tokens += tokens.size

    def add_document(self, tensor, lengths, modes=None) -> None:
        tokens = np.asarray(tensor, dtype=self.dtype)
        self._write(tokens.tobytes())
        self.sequence_lengths.extend(int(n) for n in lengths)
        self.document_indices.append(len(self.sequence_lengths))
        self.num_tokens += tokens.size

    def add_index(self, path_prefix: str) -> None:
        """Append a whole existing dataset, streaming its .bin (never loaded whole)."""
        index = _IndexReader(idx_path(path_prefix), multimodal=False)
        if index.dtype != self.dtype:
            raise ValueError(f"{path_prefix}: token dtype {index.dtype.__name__} differs from the output's "
                             f"{np.dtype(self.dtype).name}")
        offset = len(self.sequence_lengths)
        self.sequence_lengths.frombytes(np.asarray(index.sequence_lengths, dtype=np.int32).tobytes())
        self.document_indices.frombytes((offset + np.asarray(index.document_indices[1:], np.int64)).tobytes())
        self.num_tokens += int(np.sum(index.sequence_lengths, dtype=np.int64))
        del index
        with open(bin_path(path_prefix), "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                self._write(block)

    def finalize(self, idx_path: str) -> None:
        self.data_file.close()
        lengths = np.frombuffer(self.sequence_lengths, dtype=np.int32)
        doc_indices = np.frombuffer(self.document_indices, dtype=np.int64)
        with _VectorisedIndexWriter(idx_path, self.dtype) as writer:
            writer.write(lengths, None, doc_indices)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_stale_partials(prefix: str) -> list[str]:
    """Remove the ``.partial-PID`` files of ``prefix`` (data files and report) whose process is gone (a killed
    run); returns the removed paths. Files of a live process are left alone."""
    from vffn_pretrain.outputs.atomic import sweep_stale_partials as sweep

    def warn(message: str) -> None:
        print(f"vffn-data: {message}", file=sys.stderr)

    return [p for final in (bin_path(prefix), idx_path(prefix), report_path(prefix)) for p in sweep(final, warn)]


class AtomicIndexedWriter:
    """Write a prefix under temporary names; ``commit()`` renames into place, ``abort()`` removes everything.

    As a context manager it aborts on any exception (including KeyboardInterrupt) and does not commit on its
    own: call ``commit()`` when done.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: type[np.number], *, overwrite: bool = False,
                 lock=None):
        self.prefix = str(prefix)
        self.overwrite = overwrite
        self.lock = lock  # an outputs.lock.OwnerLock held on the prefix, checked again at commit
        check_output(self.prefix, overwrite)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_partials(self.prefix)
        tag = f".partial-{os.getpid()}"
        self.tmp_bin = bin_path(self.prefix) + tag
        self.tmp_idx = idx_path(self.prefix) + tag
        self.dtype = dtype
        self.builder = CompactIndexedDatasetBuilder(self.tmp_bin, dtype)
        self.committed = False

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self.builder.add_documents(tokens, lengths)

    def add_index(self, prefix: str) -> None:
        self.builder.add_index(prefix)

    def commit(self) -> dict:
        """Finish the files and move them into place. Returns sizes and checksums for the report."""
        self.builder.finalize(self.tmp_idx)
        for path in (self.tmp_bin, self.tmp_idx):
            _fsync(path)
        if self.lock is not None:
            self.lock.verify()
        check_output(self.prefix, self.overwrite)  # written meanwhile by a writer that took no lock?
        final_bin, final_idx = bin_path(self.prefix), idx_path(self.prefix)
        # Order matters: drop the old report and .idx first, so that at every instant either no valid prefix
        # exists or the new .bin and .idx are both in place.
        for old in (report_path(self.prefix), final_idx):
            if os.path.exists(old):
                os.remove(old)
        os.replace(self.tmp_bin, final_bin)
        os.replace(self.tmp_idx, final_idx)
        _fsync(str(Path(self.prefix).parent))
        self.committed = True
        return {
            "bin": final_bin,
            "idx": final_idx,
            "bin_bytes": os.path.getsize(final_bin),
            "idx_bytes": os.path.getsize(final_idx),
            "bin_sha256": self.builder.bin_sha256.hexdigest(),
            "idx_sha256": sha256_file(final_idx),
        }

    def abort(self) -> None:
        try:
            self.builder.data_file.close()
        except Exception:
            pass
        for path in (self.tmp_bin, self.tmp_idx):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> AtomicIndexedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()
