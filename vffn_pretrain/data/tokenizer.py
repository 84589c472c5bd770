"""Tokenizers accepted by the data tools and the trainer, behind one small interface.

``build_tokenizer(spec)`` understands:

* ``None`` (or ``"bundled"``): the byte-level BPE shipped in ``vffn_pretrain/data/assets`` (trained on the
  bundled corpus, see ``vffn_pretrain/data/assets/SOURCE.md``);
* a path to a HuggingFace ``tokenizer.json``;
* a path to a tiktoken BPE file (lines of ``base64-token rank``), optionally written ``tiktoken:PATH``.
  When the file name is one of tiktoken's own encodings (``cl100k_base.tiktoken``, ``o200k_base.tiktoken``,
  ...) its split pattern and special tokens are taken from tiktoken; otherwise the GPT-2 pattern is used and
  ``<|endoftext|>`` is appended after the last rank;
* ``null:N``: the format of megatron-core's ``NullTokenizer`` (text is space-separated integer ids), with
  ``vocab_size == N`` and ``eod == N - 1``. Meant for tests.

Nothing is ever downloaded. Every tokenizer exposes what megatron-core's ``GPTDatasetConfig`` needs
(``vocab_size``, ``eod``, ``pad``, ``unique_identifiers``) plus ``tokenize``/``tokenize_batch``/``detokenize``,
a human ``name``, the ``spec`` that rebuilds it, and ``hash``: a SHA-256 of the tokenizer's content (the file
bytes, not the path), so that two copies of one tokenizer are recognised as the same.

This module must stay cheap to import: tokenize worker processes import it and nothing else heavy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from vffn_pretrain.data.assets import BUNDLED_TOKENIZER
from vffn_pretrain.data.hashing import sha256_file

# Names tried, in order, for the end-of-document token of a HuggingFace tokenizer.
EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|im_end|>")
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")
# megatron-core's datasets treat -1 as "no pad token": it never occurs in data, so nothing real is masked.
NO_PAD = -1


class BaseTokenizer:
    """Common behaviour: identity, pickling by spec, and the megatron-core dataset attributes."""

    name: str
    spec: str
    hash: str
    vocab_size: int
    eod: int
    pad: int

    @property
    def unique_identifiers(self) -> OrderedDict:
        """What megatron-core hashes into its dataset cache keys: content, not paths."""
        return OrderedDict(
            [("class", type(self).__name__), ("name", self.name), ("hash", self.hash),
             ("vocab_size", self.vocab_size), ("eod", self.eod)]
        )

    def identity(self) -> dict[str, Any]:
        """The tokenizer's identity as written into reports."""
        return {"name": self.name, "spec": self.spec, "class": type(self).__name__, "vocab_size": self.vocab_size,
                "eod": self.eod, "pad": self.pad, "hash": self.hash}

    # Whether encoding a text in the pieces ``pieces.safe_cuts`` makes, and concatenating the ids, gives exactly
    # the ids of the whole text. Only claimed for the pre-tokenizers that module's reasoning covers (and its
    # tests check); other tokenizers encode long documents whole, up to a size limit.
    piecewise_safe: bool = False

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        """Tokenize many documents; single-threaded (parallelism is the caller's business)."""
        return [self.tokenize(t) for t in texts]

    def detokenize(self, ids) -> str:
        raise NotImplementedError

    # Rebuild from the spec when pickled (DataLoader workers, spawn): native tokenizer objects need not be
    # picklable, and the spec is small.
    def __getstate__(self):
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.__dict__.update(build_tokenizer(state["spec"]).__dict__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eod={self.eod})"


class HFTokenizer(BaseTokenizer):
    """A HuggingFace ``tokenizers`` tokenizer loaded from a ``tokenizer.json`` file."""

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        from tokenizers import Tokenizer

        self.path = Path(path).resolve()
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for damaged or unreadable files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{self.path}: not a readable tokenizer.json ({first})") from None
        # A literal "<|endoftext|>" inside a document is text, not a control token (as with tiktoken's
        # encode_ordinary): otherwise documents could forge document boundaries.
        self._tok.encode_special_tokens = True
        vocab = self._tok.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError(f"tokenizer {self.path} has an empty vocabulary")
        # Ids may be sparse; the embedding must cover the largest one.
        self.vocab_size = max(vocab.values()) + 1
        eod = next((vocab[t] for t in EOD_CANDIDATES if t in vocab), None)
        if eod is None:
            raise ValueError(
                f"tokenizer {self.path} has no end-of-document token (looked for {', '.join(EOD_CANDIDATES)})"
            )
        self.eod = eod
        self.pad = next((vocab[t] for t in PAD_CANDIDATES if t in vocab), NO_PAD)
        self.name = name or self.path.name
        self.spec = str(self.path)
        self.hash = sha256_file(self.path)
        self.piecewise_safe = _hf_piecewise_safe(json.loads(self._tok.to_str()))

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking, which we never use.
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _hf_piecewise_safe(config: dict) -> bool:
    """True for a plain GPT-2 style byte-level BPE: no normalizer, the ``ByteLevel`` pre-tokenizer with its regex
    and no prefix space, a deterministic BPE model, and only special added tokens (which ``encode_special_tokens``
    makes ordinary text)."""
    pre = config.get("pre_tokenizer") or {}
    model = config.get("model") or {}
    return (config.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and model.get("type") == "BPE" and not model.get("dropout")
            and all(t.get("special") for t in config.get("added_tokens") or []))


# tiktoken encodings whose split pattern ``pieces.safe_cuts`` covers (GPT-2's, cl100k's, o200k's).
_PIECEWISE_SAFE_TIKTOKEN = ("r50k_base", "p50k_base", "cl100k_base", "o200k_base")


def _tiktoken_pattern(name: str) -> str | None:
    """The split pattern of tiktoken's encoding ``name`` (None if this tiktoken lacks it); downloads nothing."""
    from tiktoken_ext import openai_public

    ctor = getattr(openai_public, "ENCODING_CONSTRUCTORS", {}).get(name)
    if ctor is None:
        return None
    with _patched(openai_public, "load_tiktoken_bpe", lambda *a, **k: {}):
        return ctor()["pat_str"]


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: not a tiktoken BPE line ({err})") from None
    if not ranks:
        raise ValueError(f"{path}: empty tiktoken BPE file")
    return ranks


def _tiktoken_constructor(path: Path, ranks: dict[bytes, int]) -> dict[str, Any]:
    """Encoding arguments for a local tiktoken file.

    If the file is one of tiktoken's published encodings (by file name), reuse tiktoken's own definition of
    that encoding (split pattern, special tokens), feeding it our local ranks instead of letting it download.
    """
    from tiktoken_ext import openai_public

    known = getattr(openai_public, "ENCODING_CONSTRUCTORS", {})
    stem = path.name.split(".")[0]
    if stem in known and stem != "gpt2":  # gpt2 is built from a different file format
        with _patched(openai_public, "load_tiktoken_bpe", lambda *a, **k: ranks):
            return known[stem]()
    eot = max(ranks.values()) + 1
    return {"name": path.name, "pat_str": openai_public.r50k_pat_str, "mergeable_ranks": ranks,
            "special_tokens": {"<|endoftext|>": eot}}


@contextlib.contextmanager
def _patched(module, attr, value):
    old = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, old)


class TiktokenTokenizer(BaseTokenizer):
    """A tiktoken encoding built from a local BPE ranks file."""

    def __init__(self, path: str | os.PathLike):
        import tiktoken

        self.path = Path(path).resolve()
        ctor = _tiktoken_constructor(self.path, _read_tiktoken_ranks(self.path))
        ctor.pop("explicit_n_vocab", None)  # checked by tiktoken against the full file; ours may be partial
        self._enc = tiktoken.Encoding(**ctor)
        special = ctor["special_tokens"]
        if "<|endoftext|>" not in special:
            raise ValueError(f"tiktoken encoding {self.path} has no <|endoftext|> token")
        self.vocab_size = self._enc.n_vocab
        self.piecewise_safe = ctor["pat_str"] in {_tiktoken_pattern(n) for n in _PIECEWISE_SAFE_TIKTOKEN}
        self.eod = special["<|endoftext|>"]
        self.pad = next((special[t] for t in PAD_CANDIDATES if t in special), NO_PAD)
        self.name = self.path.name
        self.spec = f"tiktoken:{self.path}"
        self.hash = sha256_file(self.path)

    def tokenize(self, text: str) -> list[int]:
        # Special-token strings inside documents are ordinary text, never control tokens.
        return self._enc.encode_ordinary(text)

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def detokenize(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids], errors="replace")


class NullTokenizer(BaseTokenizer):
    """The format of megatron-core's ``NullTokenizer``: documents are whitespace-separated integer ids. ``null:N``
    has N ids, the last of which (N - 1) is the end-of-document token. Written here rather than imported: megatron's
    tokenizer package imports transformers, which costs every trainer seconds at start-up."""

    def __init__(self, vocab_size: int):
        if vocab_size < 2:
            raise ValueError(f"null tokenizer needs a vocab size of at least 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.eod = vocab_size - 1
        self.pad = NO_PAD
        self.name = self.spec = f"null:{vocab_size}"
        self.hash = hashlib.sha256(self.spec.encode()).hexdigest()

    def tokenize(self, text: str) -> list[int]:
        return [int(word) for word in text.split()]

    def detokenize(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


def bundled_tokenizer_path() -> Path:
    """The tokenizer.json shipped with the bundled corpus."""
    return BUNDLED_TOKENIZER


def _looks_like_tiktoken(path: Path) -> bool:
    with open(path, "rb") as f:
        first = f.readline().split()
    if len(first) != 2 or not first[1].isdigit():
        return False
    try:
        base64.b64decode(first[0], validate=True)
    except ValueError:
        return False
    return True


def build_tokenizer(spec: str | os.PathLike | None) -> BaseTokenizer:
    """Build a tokenizer from its spec (see the module docstring). Raises ValueError for a bad spec."""
    if spec is None or str(spec) == "bundled":
        return HFTokenizer(bundled_tokenizer_path())
    spec = str(spec)
    if spec.startswith("null:"):
        try:
            n = int(spec[len("null:"):])
        except ValueError:
            raise ValueError(f"bad null tokenizer spec {spec!r}: expected null:VOCAB_SIZE") from None
        return NullTokenizer(n)
    if spec.startswith("tiktoken:"):
        path = Path(spec[len("tiktoken:"):]).expanduser()
        if not path.is_file():
            raise ValueError(f"tiktoken file not found: {path}")
        return TiktokenTokenizer(path)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"tokenizer file not found: {path} (expected a tokenizer.json, a tiktoken file, "
                         f"'null:N' or nothing for the bundled tokenizer)")
    if path.suffix == ".json":
        return HFTokenizer(path)
    if _looks_like_tiktoken(path):
        return TiktokenTokenizer(path)
    raise ValueError(f"{path}: neither a HuggingFace tokenizer.json nor a tiktoken BPE file")
