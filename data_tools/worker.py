"""Per-chunk work, run in tokenize worker processes (or inline with ``--workers 0``).

A chunk of raw records becomes a ``ChunkResult``: the token ids of every good document, each followed by the
end-of-document id, flattened into one array of the output dtype, their lengths, and the records skipped with
their line and reason. The function is pure (same chunk, same result), which is what makes the output
independent of the number of workers. Workers never raise on bad records; the main process decides whether a
skip is an error (``--strict``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from dataclasses import dataclass, field

import numpy as np

from data_tools.readers import Chunk

# Skip reasons, as written into reports.
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
BAD_FIELD_TYPE = "bad_field_type"
EMPTY_DOCUMENT = "empty_document"
TOKENIZE_ERROR = "tokenize_error"
TOKEN_OUT_OF_RANGE = "token_out_of_range"


@dataclass
class ChunkResult:
    path: str
    tokens: np.ndarray
    lengths: np.ndarray
    docs_read: int
    # (line, reason, detail) for each skipped record, in input order.
    skips: list[tuple[int, str, str]] = field(default_factory=list)
    progress_bytes: int = 0
    text_bytes: int = 0
    # Whitespace-only jsonl lines: not documents and not errors (common at the end of files), only counted.
    blank_lines: int = 0


@dataclass
class WorkerConfig:
    text_key: str
    dtype: str


_STATE: dict = {}


def init_worker(tokenizer_spec: str, config: WorkerConfig) -> None:
    """Process-pool initializer: build the tokenizer once per worker."""
    # The main process owns Ctrl-C: it stops the pool and removes partial files.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A killed main process cannot stop its workers: they stop themselves.
    from vffn_pretrain.lifetime import exit_with_parent

    exit_with_parent()
    # One thread per worker: --workers is the parallelism, not workers x tokenizer threads.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from vffn_pretrain.data.tokenizer import build_tokenizer

    set_state(build_tokenizer(tokenizer_spec), config)


def set_state(tokenizer, config: WorkerConfig) -> None:
    _STATE["tokenizer"] = tokenizer
    _STATE["config"] = config


def _utf8_error(err: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 byte 0x{err.object[err.start]:02x} at byte {err.start}"


def _records(chunk: Chunk, text_key: str, skips: list, blank: list):
    """Yield (line, text) for good records; append (line, reason, detail) to ``skips`` for bad ones and the
    line of each blank jsonl line to ``blank``."""
    if chunk.kind == "jsonl":
        lines = chunk.payload.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the terminator of the last line, not a record
        for i, raw in enumerate(lines):
            lineno = chunk.first_line + i
            if not raw.strip():
                blank.append(lineno)
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                skips.append((lineno, INVALID_UTF8, _utf8_error(err)))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                skips.append((lineno, MALFORMED_JSON, str(err)))
                continue
            if not isinstance(obj, dict):
                skips.append((lineno, MALFORMED_JSON, f"a JSON {type(obj).__name__}, not an object"))
                continue
            text = obj.get(text_key)
            if text is None:
                skips.append((lineno, MISSING_FIELD, f"no {text_key!r} field"))
                continue
            if not isinstance(text, str):
                skips.append((lineno, BAD_FIELD_TYPE, f"{text_key!r} is a {type(text).__name__}, not a string"))
                continue
            yield lineno, text
    elif chunk.kind == "raw_docs":
        for lineno, raw in zip(chunk.numbers, chunk.payload):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                skips.append((lineno, INVALID_UTF8, _utf8_error(err)))
    elif chunk.kind == "str_docs":
        for row, value in zip(chunk.numbers, chunk.payload):
            if value is None:
                skips.append((row, MISSING_FIELD, f"null {text_key!r} value"))
            elif not isinstance(value, str):
                skips.append((row, BAD_FIELD_TYPE, f"{text_key!r} is a {type(value).__name__}, not a string"))
            else:
                yield row, value
    else:
        raise ValueError(f"unknown chunk kind {chunk.kind!r}")


def _tokenize_all(tokenizer, texts: list[str]) -> list[list[int] | Exception]:
    try:
        return tokenizer.tokenize_batch(texts)
    except Exception:
        # One bad document fails the whole batch: redo one by one to find it and keep the others.
        out: list[list[int] | Exception] = []
        for text in texts:
            try:
                out.append(tokenizer.tokenize(text))
            except Exception as err:
                out.append(err)
        return out


def process_chunk(chunk: Chunk, tokenizer=None, config: WorkerConfig | None = None) -> ChunkResult:
    """Decode, validate and tokenize one chunk (see the module docstring)."""
    tokenizer = tokenizer or _STATE["tokenizer"]
    config = config or _STATE["config"]
    skips: list[tuple[int, str, str]] = []
    lines: list[int] = []
    texts: list[str] = []
    blank: list[int] = []
    for lineno, text in _records(chunk, config.text_key, skips, blank):
        if not text.strip():
            skips.append((lineno, EMPTY_DOCUMENT, "empty document"))
            continue
        lines.append(lineno)
        texts.append(text)
    docs_read = len(texts) + len(skips)

    eod, vocab = tokenizer.eod, tokenizer.vocab_size
    pieces: list[list[int]] = []
    for lineno, ids in zip(lines, _tokenize_all(tokenizer, texts)):
        if isinstance(ids, Exception):
            skips.append((lineno, TOKENIZE_ERROR, f"{type(ids).__name__}: {ids}"))
            continue
        if ids and (max(ids) >= vocab or min(ids) < 0):
            bad = next(i for i in ids if i >= vocab or i < 0)
            skips.append((lineno, TOKEN_OUT_OF_RANGE, f"token id {bad} outside [0, {vocab})"))
            continue
        ids.append(eod)
        pieces.append(ids)
    skips.sort(key=lambda s: s[0])  # input order, whichever stage found the problem

    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int32, count=len(pieces))
    total = int(lengths.sum())
    tokens = np.fromiter(itertools.chain.from_iterable(pieces), dtype=config.dtype, count=total)
    return ChunkResult(chunk.path, tokens, lengths, docs_read, skips, chunk.progress_bytes, chunk.text_bytes,
                       blank_lines=len(blank))
