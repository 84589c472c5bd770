"""A dataset prefix and its files (`vffn_pretrain.data.prefix`), with a prefix whose last part has a dot, as
megatron's preprocessing names them (`corpus.v2_text_document`): the suffixes are appended, never swapped in."""

from __future__ import annotations

import numpy as np
import pytest

from vffn_pretrain.data import assets, bundled
from vffn_pretrain.data.checks import check_report_tokenizer
from vffn_pretrain.data.config import parse_blend
from vffn_pretrain.data.indexed import open_indexed_dataset, verify_prefix
from vffn_pretrain.data.prefix import bin_path, existing_files, idx_path, report_path, strip_file_suffix
from vffn_pretrain.data.tokenizer import build_tokenizer
from vffn_pretrain.data.tokenizing import pipeline
from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize

DOTTED = "out/corpus.v2_text_document"


def test_file_names_append_to_a_dotted_prefix():
    assert bin_path(DOTTED) == "out/corpus.v2_text_document.bin"
    assert idx_path(DOTTED) == "out/corpus.v2_text_document.idx"
    assert report_path(DOTTED) == "out/corpus.v2_text_document.report.json"
    assert strip_file_suffix(DOTTED + ".bin") == strip_file_suffix(DOTTED + ".idx") == DOTTED
    assert strip_file_suffix(DOTTED) == DOTTED and strip_file_suffix("a.v2.json") == "a.v2.json"
    assert parse_blend(DOTTED + ".idx")[0] == [DOTTED]


def test_a_dotted_prefix_is_written_opened_and_its_report_found(tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("1 2 3\n\n4 5\n")
    prefix = str(tmp_path / "corpus.v2_text_document")
    run_tokenize(TokenizeOptions(inputs=[str(src)], output_prefix=prefix, tokenizer="null:1000",
                                 split_on_blank_lines=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.v2_text_document.bin",
                                                          "corpus.v2_text_document.idx",
                                                          "corpus.v2_text_document.report.json", "docs.txt"]
    assert len(existing_files(prefix)) == 3
    assert verify_prefix(prefix).num_documents == 2
    eod = build_tokenizer("null:1000").eod
    assert [np.asarray(s).tolist() for s in open_indexed_dataset(prefix)] == [[1, 2, 3, eod], [4, 5, eod]]
    with pytest.raises(ValueError, match="was tokenized with"):  # the report was found and read
        check_report_tokenizer(prefix, build_tokenizer("null:2000"))


def test_the_bundled_cache_under_a_dotted_name_is_reused(tmp_path, monkeypatch):
    corpus = tmp_path / "small.txt"
    corpus.write_text("7 8 9\n\n10 11\n")
    monkeypatch.setattr(assets, "BUNDLED_CORPUS", corpus)
    monkeypatch.setattr(assets, "BUNDLED_NAME", "corpus.v2")
    tokenizer = build_tokenizer("null:1000")
    first = bundled.ensure_bundled_prefix(tmp_path / "cache", tokenizer)
    assert first.name == "corpus.v2" and verify_prefix(first).num_documents == 2
    monkeypatch.setattr(pipeline, "run_tokenize", lambda *a, **k: pytest.fail("re-tokenized a cached prefix"))
    assert bundled.ensure_bundled_prefix(tmp_path / "cache", tokenizer) == first
