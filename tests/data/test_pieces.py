"""Long documents encoded in pieces: the ids equal the whole document's, and no encoder call sees more than the
bound (issue 11, class 6)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.data.test_tokenizer import _write_tiktoken
from vffn_pretrain.data.assets import BUNDLED_TOKENIZER
from vffn_pretrain.data.pieces import SAFE_CUT, safe_cuts
from vffn_pretrain.data.tokenizer import build_tokenizer
from vffn_pretrain.data.tokenizing.readers import Chunk
from vffn_pretrain.data.tokenizing.worker import DOCUMENT_TOO_LONG, WorkerConfig, process_chunk

# Pieces of text a random document is made of, each repeated a random number of times: letters of several
# scripts and cases, contractions, digits, punctuation, every kind of whitespace the patterns treat specially
# (runs of spaces and newlines, CRLF, tabs, no-break and ideographic spaces, separators that Python counts as
# whitespace and the regexes may not), combining marks, emoji, a special-token string.
SOLID = ["a", "Zq", "éß", "日本語", "Ωμέγα", "'s", "'LL", "'t", "'", "1", "12345", "½²", ".", ",", "!?", "--", "(",
         ")", "/", "_", "🙂", "\u0301", "<|endoftext|>", "\u200b"]
SPACES = [" ", "\n"]
OTHER_SPACES = ["\r\n", "\r", "\t", "\u00a0", "\u3000", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"]


def random_text(rng: random.Random, n_atoms: int) -> str:
    out = []
    for _ in range(n_atoms):
        atom = rng.choice(rng.choices([SOLID, SPACES, OTHER_SPACES], weights=[6, 3, 1])[0])
        # Mostly short runs, sometimes long ones (long runs of spaces, newlines, or text without whitespace).
        out.append(atom * (rng.randint(1, 3) if rng.random() < 0.8 else rng.randint(4, 60)))
    return "".join(out)


def _tiktoken(tmp_path, name):
    # The real split pattern of tiktoken's encoding `name` (taken from tiktoken by the file name), with a small
    # rank table whose merges span spaces, newlines and punctuation, so a wrong cut changes the ids.
    merges = (b"  ", b"    ", b"\n\n", b" \n", b"\r\n", b".\n", b"th", b"the", b" the", b"'s", b" a", b"12", b"aZ")
    return build_tokenizer(str(_write_tiktoken(tmp_path / f"{name}.tiktoken", merges)))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiktoken")
    toks = {"bundled": build_tokenizer(None)}
    for name in ("r50k_base", "cl100k_base", "o200k_base"):
        toks[name] = _tiktoken(tmp, name)
    return toks


def test_these_tokenizers_claim_piecewise_safety(tokenizers):
    assert all(t.piecewise_safe for t in tokenizers.values())


@pytest.mark.parametrize("name", ["bundled", "r50k_base", "cl100k_base", "o200k_base"])
def test_random_texts_encode_the_same_whole_and_in_pieces(tokenizers, name):
    # Every position SAFE_CUT finds is a safe cut: cut a random text at a random subset of them.
    tok = tokenizers[name]
    rng = random.Random(1234)
    cut_count = 0
    for _ in range(600):
        text = random_text(rng, rng.randint(5, 120))
        positions = [m.start() for m in SAFE_CUT.finditer(text)]
        cuts = [0, *sorted(rng.sample(positions, k=rng.randint(0, len(positions)))), len(text)]
        cut_count += len(cuts) - 2
        pieces = [i for a, b in zip(cuts, cuts[1:]) for i in tok.tokenize(text[a:b])]
        assert pieces == tok.tokenize(text), (name, text, cuts)
    assert cut_count > 1500  # the property was really exercised


def test_safe_cuts_bound_the_pieces():
    rng = random.Random(5)
    cut_texts = 0
    for _ in range(600):
        text = random_text(rng, rng.randint(5, 120))
        max_chars = rng.randint(20, 200)
        cuts = safe_cuts(text, max_chars)
        if cuts is None:  # then some window of max_chars characters has no safe cut
            assert any(not any(a < m.start() <= a + max_chars for m in SAFE_CUT.finditer(text))
                       for a in range(len(text) - max_chars))
            continue
        cut_texts += 1
        assert cuts[0] == 0 and cuts[-1] == len(text)
        assert all(0 < b - a <= max_chars for a, b in zip(cuts, cuts[1:]))
        assert all(SAFE_CUT.match(text, c) for c in cuts[1:-1])
    assert cut_texts > 50


def test_cuts_are_none_without_a_safe_place():
    assert safe_cuts("x" * 100, 10) is None
    assert safe_cuts("   \n\n  " * 20, 10) is None  # only whitespace: no non-whitespace neighbour
    assert safe_cuts("x" * 10, 10) == [0, 10]
    assert safe_cuts("ab cd\nef", 4) == [0, 2, 6, 8]


def test_other_tokenizers_do_not_claim_it(tmp_path):
    assert not build_tokenizer("null:100").piecewise_safe
    config = json.loads(BUNDLED_TOKENIZER.read_text())
    config["pre_tokenizer"]["add_prefix_space"] = True  # every piece would get a leading space
    path = tmp_path / "prefix-space.json"
    path.write_text(json.dumps(config))
    assert not build_tokenizer(str(path)).piecewise_safe
    gpt2_like = _write_tiktoken(tmp_path / "custom.tiktoken")  # the GPT-2 pattern: covered
    assert build_tokenizer(str(gpt2_like)).piecewise_safe


def _chunk(texts):
    payload = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    return Chunk(path="in.jsonl", kind="jsonl", first_line=1, payload=payload)


def _spy_on(tok, monkeypatch):
    """Record the length of every text handed to the tokenizer."""
    seen = []
    one, many = tok.tokenize, tok.tokenize_batch
    monkeypatch.setattr(tok, "tokenize", lambda text: seen.append(len(text)) or one(text))
    monkeypatch.setattr(tok, "tokenize_batch", lambda texts: seen.extend(map(len, texts)) or many(texts))
    return seen


def test_long_document_is_encoded_in_bounded_pieces_with_identical_ids(monkeypatch):
    tok = build_tokenizer(None)
    rng = random.Random(7)
    long_doc = "".join(random_text(rng, 40) + rng.choice([" ", "\n"]) for _ in range(2000))
    docs = ["short one", long_doc, "another short"]
    whole = [tok.tokenize(t) for t in docs]
    seen = _spy_on(tok, monkeypatch)
    config = WorkerConfig(text_key="text", dtype="uint16", max_doc_bytes=10 ** 9, piece_chars=5000)
    result = process_chunk(_chunk(docs), tok, config)
    assert len(long_doc) > 20 * config.piece_chars
    assert max(seen) <= config.piece_chars
    assert not result.skips
    expected = np.array([i for ids in whole for i in ids + [tok.eod]], dtype=np.uint16)
    assert result.tokens.tobytes() == expected.tobytes()
    assert result.lengths.tolist() == [len(ids) + 1 for ids in whole]


def test_uncuttable_document_over_the_limit_is_skipped_with_its_size(monkeypatch):
    tok = build_tokenizer(None)
    seen = _spy_on(tok, monkeypatch)
    config = WorkerConfig(text_key="text", dtype="uint16", max_doc_bytes=30_000, piece_chars=1000)
    docs = ["ok", "y" * 20_000, "z" * 40_000, "fine too"]  # no place to cut either long one
    result = process_chunk(_chunk(docs), tok, config)
    assert result.skips == [(3, DOCUMENT_TOO_LONG, "document of 0.04 MB is over --max-doc-mb 0.03 and no safe "
                                                   "place to cut it into pieces")]
    assert result.lengths.tolist() == [len(tok.tokenize(t)) + 1 for t in ("ok", "y" * 20_000, "fine too")]
    assert max(seen) <= config.max_doc_bytes  # the 20 kB one was encoded whole, within the limit


def test_cli_skips_an_uncuttable_document_over_the_limit_with_one_line(tmp_path, capsys):
    from data_tools.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a b c", "x" * 30_000, "d e"]))
    code = main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / "out"), "--workers", "0",
                 "--no-progress", "--max-doc-mb", "0.02"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.strip() == (f"vffn-data: warning: {src}:2: document of 0.03 MB is over --max-doc-mb 0.02 and no "
                           f"safe place to cut it into pieces; skipped")
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["documents"]["written"] == 2
    assert report["skipped"]["by_reason"] == {DOCUMENT_TOO_LONG: 1}
