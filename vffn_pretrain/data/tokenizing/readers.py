"""Input discovery and streaming: files (or globs) to a sequence of bounded chunks of raw documents.

Readers only split the input into records; they never decode or judge them, so that all per-record work (UTF-8
decoding, JSON parsing, tokenizing) runs in the worker processes. Each ``Chunk`` carries the file and the line
(or row) number of its first record, which is how bad records are reported with their location.

Formats, chosen by file suffix unless forced:

* ``jsonl`` (``.jsonl``, ``.ndjson``, ``.json``): one JSON object per line; the text is under a configurable key;
* ``text`` (``.txt``, ``.text``, ``.md``): the whole file is one document, or with ``split_on_blank_lines`` every
  block of lines separated by blank (whitespace-only) lines is one;
* ``parquet`` (``.parquet``): one document per row of a string column (FineWeb-Edu style shards).

``.gz`` and ``.zst``/``.zstd`` compression is undone on the fly for ``jsonl`` and ``text``. Memory is bounded by
the chunk size, except that a single record (a jsonl line, a text block, a whole file in one-document-per-file
mode) is always held whole.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("jsonl", "text", "parquet")
_SUFFIX_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text",
                  ".md": "text", ".parquet": "parquet"}
_SUFFIX_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
DEFAULT_CHUNK_BYTES = 1 << 20


class InputError(Exception):
    """An input file is missing, unreadable or not in the expected format."""


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str
    compression: str | None
    size: int


@dataclass
class Chunk:
    """A run of consecutive records from one file.

    ``kind`` is ``"jsonl"`` (payload: raw bytes of whole lines), ``"raw_docs"`` (payload: list of raw document
    bytes, with ``numbers`` their first line each) or ``"str_docs"`` (payload: list of ``str | None``, with
    ``numbers`` their 1-based row each).
    """

    path: str
    kind: str
    first_line: int
    payload: bytes | list
    numbers: list[int] | None = None
    # On-disk bytes consumed since the previous chunk, for the progress bar.
    progress_bytes: int = 0
    # Uncompressed bytes in the chunk, for throughput figures.
    text_bytes: int = 0


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def detect(path: str, fmt: str = "auto") -> tuple[str, str | None]:
    """(format, compression) of ``path`` from its suffixes, or the forced ``fmt``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = _SUFFIX_COMPRESSION.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    if fmt != "auto":
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")
        found = fmt
    else:
        found = _SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None
        if found is None:
            raise InputError(f"{path}: cannot tell the format from the file name; pass --format "
                             f"({', '.join(FORMATS)})")
    if found == "parquet" and compression:
        raise InputError(f"{path}: compressed parquet files are not supported (parquet compresses internally)")
    return found, compression


def resolve_inputs(patterns: list[str], fmt: str = "auto") -> list[InputFile]:
    """Expand files and globs (in the order given; a glob's matches sorted) and check each is readable.

    Raises InputError, before anything is written, for a glob matching nothing, a missing file, a directory or
    a file that cannot be opened.
    """
    if not patterns:
        raise InputError("no input given")
    files: list[InputFile] = []
    for pattern in patterns:
        if _has_magic(pattern):
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"no input file matches {pattern!r}")
        else:
            matches = [os.path.expanduser(pattern)]
        for path in matches:
            if not os.path.exists(path):
                raise InputError(f"input file not found: {path}")
            if not os.path.isfile(path):
                raise InputError(f"input is not a regular file: {path}")
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as err:
                raise InputError(f"input file not readable: {path} ({err.strerror or err})") from None
            found, compression = detect(path, fmt)
            files.append(InputFile(os.path.abspath(path), found, compression, os.path.getsize(path)))
    return files


class _ZstdRaw(io.RawIOBase):
    """A (possibly multi-frame) zstd stream that raises OSError on corrupt or truncated data.

    zstandard's own ``stream_reader`` ends silently at a truncated frame, which would turn a damaged download
    into a quietly shorter dataset.
    """

    def __init__(self, raw):
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            data = self._raw.read(1 << 20)
            if not data:
                if self._in_frame:
                    raise OSError("truncated zstd stream: the last frame is incomplete")
                return 0
            self._buf, self._pos = self._feed(data), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            try:
                out.append(self._dobj.decompress(data))
            except self._zstd.ZstdError as err:
                raise OSError(f"corrupt zstd data ({err})") from None
            if self._dobj.eof:  # a frame ended; what follows belongs to the next frame
                data = self._dobj.unused_data
                self._dobj = self._zstd.ZstdDecompressor().decompressobj()
                self._in_frame = False
            else:
                data = b""
                self._in_frame = True
        return b"".join(out)


class _Source:
    """An open input: a decompressed binary stream plus the position in the file on disk."""

    def __init__(self, spec: InputFile):
        self.raw = open(spec.path, "rb")
        if spec.compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb")
        elif spec.compression == "zstd":
            self.stream = io.BufferedReader(_ZstdRaw(self.raw), buffer_size=1 << 20)
        else:
            self.stream = self.raw
        self._reported = 0

    def consumed(self) -> int:
        """On-disk bytes read since the last call."""
        pos = self.raw.tell()
        delta, self._reported = pos - self._reported, pos
        return delta

    def close(self):
        if self.stream is not self.raw:
            self.stream.close()
        self.raw.close()


def _jsonl_chunks(spec: InputFile, src: _Source, chunk_bytes: int) -> Iterator[Chunk]:
    line = 1
    while True:
        data = src.stream.read(chunk_bytes)
        if not data:
            return
        if not data.endswith(b"\n"):
            data += src.stream.readline()  # finish the last line so that chunks hold whole records
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        yield Chunk(spec.path, "jsonl", line, data, progress_bytes=src.consumed(), text_bytes=len(data))
        line += n_lines


def _strip_eol(block: bytes) -> bytes:
    if block.endswith(b"\r\n"):
        return block[:-2]
    return block[:-1] if block.endswith(b"\n") else block


def _text_chunks(spec: InputFile, src: _Source, chunk_bytes: int, split_on_blank_lines: bool) -> Iterator[Chunk]:
    if not split_on_blank_lines:
        data = src.stream.read()
        yield Chunk(spec.path, "raw_docs", 1, [data], [1], progress_bytes=src.consumed(), text_bytes=len(data))
        return
    docs: list[bytes] = []
    numbers: list[int] = []
    size = 0
    block: list[bytes] = []
    block_start = 0

    def flush_block():
        nonlocal size, block
        doc = _strip_eol(b"".join(block))
        docs.append(doc)
        numbers.append(block_start)
        size += len(doc)
        block = []

    for lineno, raw_line in enumerate(src.stream, 1):
        if raw_line.strip():
            if not block:
                block_start = lineno
            block.append(raw_line)
        elif block:
            flush_block()
            if size >= chunk_bytes:
                yield Chunk(spec.path, "raw_docs", numbers[0], docs, numbers, src.consumed(), size)
                docs, numbers, size = [], [], 0
    if block:
        flush_block()
    if docs:
        yield Chunk(spec.path, "raw_docs", numbers[0], docs, numbers, src.consumed(), size)


def _parquet_chunks(spec: InputFile, text_key: str, chunk_bytes: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(spec.path)
    except Exception as err:  # pyarrow raises its own error types for non-parquet files
        raise InputError(f"{spec.path}: not a readable parquet file ({err})") from None
    names = pf.schema_arrow.names
    if text_key not in names:
        raise InputError(f"{spec.path}: no column {text_key!r} (columns: {', '.join(names)}); set --text-key")
    total_rows = max(pf.metadata.num_rows, 1)
    row = 1
    docs: list = []
    numbers: list[int] = []
    size = 0
    reported = 0

    def chunk() -> Chunk:
        nonlocal reported
        # Parquet is read by column pages, so progress is the share of rows done.
        done = spec.size * (row - 1) // total_rows
        c = Chunk(spec.path, "str_docs", numbers[0], docs, numbers, done - reported, size)
        reported = done
        return c

    for batch in pf.iter_batches(batch_size=1024, columns=[text_key]):
        for value in batch.column(0).to_pylist():
            docs.append(value)
            numbers.append(row)
            row += 1
            size += len(value) if isinstance(value, str) else 0
        if size >= chunk_bytes:
            yield chunk()
            docs, numbers, size = [], [], 0
    if docs:
        yield chunk()


def iter_chunks(files: list[InputFile], *, text_key: str = "text", split_on_blank_lines: bool = False,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
    """Stream every file as chunks of whole records, in input order. Deterministic: the chunking depends only
    on the inputs and ``chunk_bytes``, never on how the chunks are processed."""
    for spec in files:
        if spec.format == "parquet":
            yield from _parquet_chunks(spec, text_key, chunk_bytes)
            continue
        src = _Source(spec)
        try:
            if spec.format == "jsonl":
                yield from _jsonl_chunks(spec, src, chunk_bytes)
            else:
                yield from _text_chunks(spec, src, chunk_bytes, split_on_blank_lines)
        except (OSError, EOFError) as err:  # gzip and zstd report damage as these
            raise InputError(f"{spec.path}: unreadable ({err})") from None
        finally:
            src.close()
