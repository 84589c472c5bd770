"""``vffn-data train-tokenizer``: reproduces the shipped tokenizer and makes working byte-level BPEs."""

from __future__ import annotations

import hashlib
import json

from data_tools.cli import main
from tests.data.documents import write_jsonl
from vffn_pretrain.data.assets import BUNDLED_CORPUS, BUNDLED_TOKENIZER
from vffn_pretrain.data.tokenizer import build_tokenizer


def test_retraining_reproduces_the_shipped_tokenizer(tmp_path):
    out = tmp_path / "tok.json"
    assert main(["train-tokenizer", "--input", str(BUNDLED_CORPUS), "--split-on-blank-lines", "--vocab-size", "8192",
                 "--output", str(out), "--no-progress"]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(BUNDLED_TOKENIZER.read_bytes()).hexdigest()
    report = json.loads((tmp_path / "tok.report.json").read_text())
    assert report["documents"]["used"] == 11857
    assert report["tokenizer"]["vocab_size"] == 8192


def test_small_vocab_from_jsonl_round_trips(tmp_path, jargon_blocks, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", jargon_blocks[:400] + [{"no_text": 1}])
    out = tmp_path / "small.json"
    assert main(["train-tokenizer", "--input", str(src), "--vocab-size", "500", "--output", str(out)]) == 0
    tok = build_tokenizer(str(out))
    assert (tok.vocab_size, tok.eod, tok.pad) == (500, 0, 1)
    text = "Any text at all, ünïcödé included: 42 ≠ 43."
    assert tok.detokenize(tok.tokenize(text)) == text
    assert json.loads((tmp_path / "small.report.json").read_text())["skipped"]["by_reason"] == {"missing_field": 1}
    capsys.readouterr()
    assert main(["train-tokenizer", "--input", str(src), "--vocab-size", "500", "--output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
