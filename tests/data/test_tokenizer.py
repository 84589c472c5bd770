"""Tokenizer specs: the bundled BPE, tokenizer.json, tiktoken files and megatron-core's null tokenizer."""

from __future__ import annotations

import base64
import pickle
import shutil

import pytest

from vffn_pretrain.data.tokenizer import HFTokenizer, NullTokenizer, TiktokenTokenizer, build_tokenizer

SAMPLE = "Hacker slang — “jargon” — naïve café, 日本語, emoji 🙂, tabs\tand\nnewlines.  Spaces  "


def test_bundled_tokenizer_identity_and_round_trip():
    tok = build_tokenizer(None)
    assert isinstance(tok, HFTokenizer)
    assert (tok.vocab_size, tok.eod, tok.pad) == (8192, 0, 1)
    assert tok.name == "jargon-bpe-8192.json"
    ids = tok.tokenize(SAMPLE)
    assert all(0 <= i < tok.vocab_size for i in ids)
    # Byte-level BPE: exact round trip, even for text far from the training corpus.
    assert tok.detokenize(ids) == SAMPLE
    assert tok.tokenize_batch([SAMPLE, "x"]) == [ids, tok.tokenize("x")]
    assert set(tok.unique_identifiers) >= {"class", "name", "hash"}


def test_special_token_text_inside_a_document_is_plain_text():
    tok = build_tokenizer(None)
    ids = tok.tokenize("before <|endoftext|> after")
    assert tok.eod not in ids
    assert tok.detokenize(ids) == "before <|endoftext|> after"


def test_hash_depends_on_content_not_path(tmp_path):
    from vffn_pretrain.data.assets import BUNDLED_TOKENIZER

    copy = tmp_path / "copy.json"
    shutil.copy(BUNDLED_TOKENIZER, copy)
    assert build_tokenizer(str(copy)).hash == build_tokenizer(None).hash
    copy.write_text(copy.read_text().replace('"<|pad|>"', '"<|pad2|>"'))
    assert build_tokenizer(str(copy)).hash != build_tokenizer(None).hash


def test_tokenizer_pickles_by_spec():
    tok = build_tokenizer(None)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.tokenize(SAMPLE) == tok.tokenize(SAMPLE) and clone.hash == tok.hash


def _write_tiktoken(path, merges=(b"th", b"he", b"the", b" t", b" the")):
    """A small, valid BPE ranks file: the 256 bytes then a few merges."""
    tokens = [bytes([b]) for b in range(256)] + list(merges)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


def test_tiktoken_file(tmp_path):
    path = _write_tiktoken(tmp_path / "tiny.tiktoken")
    for spec in (str(path), f"tiktoken:{path}"):
        tok = build_tokenizer(spec)
        assert isinstance(tok, TiktokenTokenizer)
        assert tok.vocab_size == 262 and tok.eod == 261  # <|endoftext|> after the last rank
        ids = tok.tokenize("the theme")
        assert 258 in ids  # b"the" was merged
        assert tok.detokenize(ids) == "the theme"
        assert tok.eod not in tok.tokenize("<|endoftext|>")


def test_tiktoken_known_encoding_name_uses_tiktoken_definition(tmp_path):
    # Named like tiktoken's cl100k_base: its special tokens come from tiktoken's own definition, the ranks from
    # the local file, and nothing is downloaded.
    path = _write_tiktoken(tmp_path / "cl100k_base.tiktoken")
    tok = build_tokenizer(str(path))
    assert tok.eod == 100257
    assert tok.detokenize(tok.tokenize("the theme")) == "the theme"


def test_null_tokenizer():
    tok = build_tokenizer("null:100")
    assert isinstance(tok, NullTokenizer)
    assert (tok.vocab_size, tok.eod) == (100, 99)
    assert tok.tokenize("1 2  3\n") == [1, 2, 3]
    assert tok.detokenize([4, 5]) == "4 5"
    with pytest.raises(ValueError):
        tok.tokenize("not numbers")


@pytest.mark.parametrize("spec, message", [
    ("null:x", "null:VOCAB_SIZE"),
    ("/nonexistent/tokenizer.json", "not found"),
    ("tiktoken:/nonexistent.tiktoken", "not found"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_tokenizer(spec)


def test_file_that_is_no_tokenizer(tmp_path):
    bogus = tmp_path / "vocab.txt"
    bogus.write_text("hello world\n")
    with pytest.raises(ValueError, match="neither"):
        build_tokenizer(str(bogus))


def test_tokenizer_json_without_eod_is_rejected(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "noeod.json"
    Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")])).save(str(path))
    with pytest.raises(ValueError, match="end-of-document"):
        build_tokenizer(str(path))
