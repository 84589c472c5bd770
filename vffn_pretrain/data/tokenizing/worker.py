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

from vffn_pretrain.data.tokenizing.readers import Chunk

# Skip reasons, as written into reports.
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
BAD_FIELD_TYPE = "bad_field_type"
EMPTY_DOCUMENT = "empty_document"
TOKENIZE_ERROR = "tokenize_error"
TOKEN_OUT_OF_RANGE = "token_out_of_range"
DOCUMENT_TOO_LONG = "document_too_long"

# Documents longer than this many characters are encoded in pieces (or whole up to --max-doc-mb, see
# ``_encode_long``): a byte-level BPE needs about a hundred times its input in memory while it encodes.
PIECE_CHARS = 1 << 20
DEFAULT_MAX_DOC_MB = 16.0


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
    # The largest document (UTF-8 bytes) encoded whole when it cannot be encoded in pieces; longer ones are
    # skipped as DOCUMENT_TOO_LONG.
    max_doc_bytes: int = int(DEFAULT_MAX_DOC_MB * 1e6)
    # The longest text (characters) handed to the tokenizer in one call when a document can be cut.
    piece_chars: int = PIECE_CHARS


_STATE: dict = {}


def init_worker(tokenizer_spec: str, config: WorkerConfig) -> None:
    """Process-pool initializer: build the tokenizer once per worker."""
    # The main process owns Ctrl-C: it stops the pool and removes partial files.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A killed main process cannot stop its workers: they stop themselves.
    from vffn_pretrain.process.lifetime import exit_with_parent

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


class _Skip(Exception):
    """A document that is skipped: ``reason`` (a skip reason above) and ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _check_range(ids: list[int], vocab: int) -> list[int]:
    """``ids`` unchanged; ``_Skip`` if one is outside the vocabulary."""
    if ids and (max(ids) >= vocab or min(ids) < 0):
        bad = next(i for i in ids if i >= vocab or i < 0)
        raise _Skip(TOKEN_OUT_OF_RANGE, f"token id {bad} outside [0, {vocab})")
    return ids


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _encode_long(tokenizer, text: str, config: WorkerConfig) -> np.ndarray:
    """Encode a document longer than ``config.piece_chars``: in pieces cut where the concatenated ids equal the
    whole document's (``pieces.safe_cuts``) when the tokenizer allows it, else whole if its UTF-8 size is at
    most ``config.max_doc_bytes``, else ``_Skip`` (DOCUMENT_TOO_LONG). Either way no tokenizer call sees more
    than max(piece_chars characters, max_doc_bytes bytes): its memory is many times its input's."""
    from vffn_pretrain.data.pieces import safe_cuts

    cuts = safe_cuts(text, config.piece_chars) if tokenizer.piecewise_safe else None
    if cuts is None:
        size = _utf8_size(text)
        if size > config.max_doc_bytes:
            why = ("no safe place to cut it into pieces" if tokenizer.piecewise_safe
                   else f"the tokenizer {tokenizer.name} cannot be run on pieces")
            raise _Skip(DOCUMENT_TOO_LONG, f"document of {size / 1e6:.3g} MB is over --max-doc-mb "
                                           f"{config.max_doc_bytes / 1e6:g} and {why}")
        cuts = [0, len(text)]
    vocab = tokenizer.vocab_size
    # tokenize_batch of one piece: the batch call of a HuggingFace tokenizer skips offset tracking.
    return np.concatenate([np.array(_check_range(tokenizer.tokenize_batch([text[a:b]])[0], vocab), config.dtype)
                           for a, b in zip(cuts, cuts[1:])])


def _encode_all(tokenizer, texts: list[str], config: WorkerConfig) -> list[list[int] | np.ndarray | _Skip]:
    """Each text's ids (a list for a short text, an array of the output dtype for a long one), or the ``_Skip``
    that explains why not. Short texts are encoded in one batch; long ones one at a time (``_encode_long``)."""
    out: list[list[int] | np.ndarray | _Skip | None] = [None] * len(texts)
    short = [k for k, t in enumerate(texts) if len(t) <= config.piece_chars]
    for k, ids in zip(short, _tokenize_all(tokenizer, [texts[k] for k in short])):
        out[k] = ids
    for k, text in enumerate(texts):
        try:
            if out[k] is None:
                out[k] = _encode_long(tokenizer, text, config)
            elif isinstance(out[k], Exception):
                err = out[k]
                out[k] = _Skip(TOKENIZE_ERROR, f"{type(err).__name__}: {err}")
            else:
                out[k] = _check_range(out[k], tokenizer.vocab_size)
        except _Skip as skip:
            out[k] = skip
        except Exception as err:
            out[k] = _Skip(TOKENIZE_ERROR, f"{type(err).__name__}: {err}")
    return out


def _flatten(docs: list[list[int]], dtype: str) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(docs), dtype=dtype, count=sum(map(len, docs)))


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

    # Each document followed by the end-of-document id. Runs of short documents (lists) become one array in one
    # pass; a long document is already an array.
    lengths: list[int] = []
    segments: list[np.ndarray] = []
    run: list[list[int]] = []
    for lineno, ids in zip(lines, _encode_all(tokenizer, texts, config)):
        if isinstance(ids, _Skip):
            skips.append((lineno, ids.reason, ids.detail))
            continue
        lengths.append(len(ids) + 1)
        if isinstance(ids, list):
            ids.append(tokenizer.eod)
            run.append(ids)
            continue
        segments += [_flatten(run, config.dtype), ids, np.array([tokenizer.eod], config.dtype)]
        run = []
    segments.append(_flatten(run, config.dtype))
    skips.sort(key=lambda s: s[0])  # input order, whichever stage found the problem
    tokens = np.concatenate(segments) if len(segments) > 1 else segments[0]
    return ChunkResult(chunk.path, tokens, np.array(lengths, dtype=np.int32), docs_read, skips,
                       chunk.progress_bytes, chunk.text_bytes, blank_lines=len(blank))
