"""The compact writer matches megatron-core's own builder byte for byte; merge equals tokenizing everything."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_tools.cli import main
from tests.data.documents import number_docs, read_docs, write_jsonl
from vffn_pretrain.data.tokenizing.writer import AtomicIndexedWriter, CompactIndexedDatasetBuilder


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_compact_builder_writes_what_megatron_core_writes(tmp_path, dtype):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 200, size=rng.integers(1, 50)) for _ in range(300)]

    stock = IndexedDatasetBuilder(str(tmp_path / "stock.bin"), dtype=dtype)
    for d in docs:
        stock.add_document(torch.from_numpy(d), [len(d)])
    stock.finalize(str(tmp_path / "stock.idx"))

    ours = CompactIndexedDatasetBuilder(str(tmp_path / "ours.bin"), dtype)
    # In uneven chunks, as the tokenize pipeline appends them.
    for lo, hi in [(0, 1), (1, 120), (120, 121), (121, 300)]:
        ours.add_documents(np.concatenate(docs[lo:hi]), np.array([len(d) for d in docs[lo:hi]]))
    ours.finalize(str(tmp_path / "ours.idx"))

    assert _read(tmp_path / "ours.bin") == _read(tmp_path / "stock.bin")
    assert _read(tmp_path / "ours.idx") == _read(tmp_path / "stock.idx")


def test_empty_dataset_is_valid(tmp_path):
    from vffn_pretrain.data.indexed import verify_prefix

    with AtomicIndexedWriter(tmp_path / "empty", np.uint16) as w:
        w.commit()
    assert verify_prefix(tmp_path / "empty").num_documents == 0


def test_merge_equals_tokenizing_the_concatenated_input(tmp_path):
    parts = []
    for i in range(3):
        src = write_jsonl(tmp_path / f"p{i}.jsonl", number_docs(25, seed=10 + i))
        prefix = str(tmp_path / f"p{i}")
        assert main(["tokenize", "--input", str(src), "--output-prefix", prefix, "--tokenizer", "null:100",
                     "--workers", "0"]) == 0
        parts.append(prefix)
    assert main(["tokenize", "--input", *(f"{p}.jsonl" for p in parts), "--output-prefix", str(tmp_path / "all"),
                 "--tokenizer", "null:100", "--workers", "0"]) == 0
    assert main(["merge", "--input", *parts, "--output-prefix", str(tmp_path / "merged")]) == 0

    assert _read(tmp_path / "merged.bin") == _read(tmp_path / "all.bin")
    assert _read(tmp_path / "merged.idx") == _read(tmp_path / "all.idx")
    report = json.loads((tmp_path / "merged.report.json").read_text())
    assert report["documents"]["written"] == 75 and report["tokenizer"]["name"] == "null:100"
    assert report["tokens"] == sum(len(d) for d in read_docs(str(tmp_path / "all")))


def test_merge_refuses_mixed_dtypes_and_tokenizers(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", ["1 2", "3"])
    for name, spec in [("a", "null:100"), ("b", "null:300"), ("c", "null:120")]:
        assert main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / name), "--tokenizer", spec,
                     "--workers", "0"]) == 0
    assert main(["merge", "--input", str(tmp_path / "a"), str(tmp_path / "b"), "--output-prefix",
                 str(tmp_path / "m")]) == 1
    assert "different token dtypes" in capsys.readouterr().err
    assert main(["merge", "--input", str(tmp_path / "a"), str(tmp_path / "c"), "--output-prefix",
                 str(tmp_path / "m")]) == 1
    assert "different tokenizers" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists()
    assert main(["merge", "--input", str(tmp_path / "a"), str(tmp_path / "c"), "--output-prefix",
                 str(tmp_path / "m"), "--allow-mixed-tokenizers"]) == 0
    assert read_docs(str(tmp_path / "m")) == [[1, 2, 99], [3, 99], [1, 2, 119], [3, 119]]


def test_inspect_counts_histogram_and_sample(jargon_prefix, jargon_blocks, capsys):
    from data_tools.inspection import inspect_prefix

    info = inspect_prefix(jargon_prefix, sample_index=5)
    lengths = [len(d) for d in read_docs(jargon_prefix)]
    assert info["documents"] == len(jargon_blocks) == len(lengths)
    assert info["tokens"] == sum(lengths)
    assert info["dtype"] == "uint16"
    assert sum(h["count"] for h in info["length_histogram"]) == len(lengths)
    for h in info["length_histogram"]:
        assert h["count"] == sum(h["min"] <= n < h["max_exclusive"] for n in lengths)
    # The decoded sample is the original block followed by the end-of-document token.
    assert info["sample"]["text"].rstrip("…") == (jargon_blocks[5] + "<|endoftext|>")[:600]

    assert main(["inspect", jargon_prefix, "--json", "--sample", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == info["tokens"]
    assert main(["inspect", jargon_prefix]) == 0
    out = capsys.readouterr().out
    assert f"{info['documents']:,}" in out and "histogram" in out and "jargon-bpe-8192.json" in out
