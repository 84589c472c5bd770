"""``vffn-data tokenize``: formats, compression, globs, EOS, dtype, worker-count independence and the report."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest

from data_tools.cli import main
from tests.data.documents import number_docs, read_docs, write_jsonl


def _ids(doc: str) -> list[int]:
    return [int(x) for x in doc.split()]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_jsonl_documents_get_eos_and_keep_order(tmp_path):
    docs = number_docs(50)
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    assert main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
                 "--tokenizer", "null:100", "--workers", "0"]) == 0
    assert read_docs(str(tmp_path / "out")) == [_ids(d) + [99] for d in docs]


def test_formats_and_compression_give_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = number_docs(30, seed=1)
    payload = "".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    half = payload.index(b"\n", len(payload) // 2) + 1  # two zstd frames, as concatenated shards have
    zstd = zstandard.ZstdCompressor()
    (tmp_path / "a.jsonl.zst").write_bytes(zstd.compress(payload[:half]) + zstd.compress(payload[half:]))
    pq.write_table(pa.table({"body": docs, "id": list(range(len(docs)))}), tmp_path / "a.parquet",
                   row_group_size=7)
    (tmp_path / "blocks.txt").write_text("\n\n".join(docs) + "\n")
    (tmp_path / "blocks.txt.gz").write_bytes(gzip.compress(("\n\n  \n".join(docs) + "\n").encode()))

    expected = [_ids(d) + [99] for d in docs]
    for name, extra in [("a.jsonl.gz", []), ("a.jsonl.zst", []), ("a.parquet", []),
                        ("blocks.txt", ["--split-on-blank-lines"]), ("blocks.txt.gz", ["--split-on-blank-lines"])]:
        out = tmp_path / f"out-{name}"
        assert main(["tokenize", "--input", str(tmp_path / name), "--output-prefix", str(out), "--tokenizer",
                     "null:100", "--text-key", "body", "--workers", "0", *extra]) == 0, name
        assert read_docs(str(out)) == expected, name


def test_plain_text_is_one_document_per_file_by_default(tmp_path):
    for i, text in enumerate(["1 2\n\n3 4\n", "5\n\n\n6"]):
        (tmp_path / f"doc{i}.txt").write_text(text)
    assert main(["tokenize", "--input", str(tmp_path / "doc*.txt"), "--output-prefix", str(tmp_path / "out"),
                 "--tokenizer", "null:100", "--workers", "0"]) == 0
    assert read_docs(str(tmp_path / "out")) == [[1, 2, 3, 4, 99], [5, 6, 99]]


def test_several_inputs_and_globs_in_the_order_given(tmp_path):
    for name, docs in [("b1.jsonl", ["1"]), ("b2.jsonl", ["2"]), ("a.jsonl", ["3"])]:
        write_jsonl(tmp_path / name, docs)
    assert main(["tokenize", "--input", str(tmp_path / "a.jsonl"), str(tmp_path / "b*.jsonl"), "--output-prefix",
                 str(tmp_path / "out"), "--tokenizer", "null:100", "--workers", "0"]) == 0
    assert read_docs(str(tmp_path / "out")) == [[3, 99], [1, 99], [2, 99]]


@pytest.mark.parametrize("spec, dtype", [("null:200", np.uint8), ("null:256", np.uint8), ("null:257", np.uint16),
                                         (None, np.uint16), ("null:70000", np.int32)])
def test_smallest_dtype(tmp_path, spec, dtype):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    write_jsonl(tmp_path / "a.jsonl", ["1 2 3"])
    args = ["tokenize", "--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
            "--workers", "0"] + (["--tokenizer", spec] if spec else [])
    assert main(args) == 0
    assert IndexedDataset(str(tmp_path / "out")).index.dtype == dtype


def test_output_is_byte_identical_for_any_number_of_workers(tmp_path, jargon_blocks):
    # Real text and the bundled tokenizer, a few bad records, and chunks small enough that many are in flight.
    records = [{"text": b} for b in jargon_blocks[:1500]]
    records[10] = {"no_text": 1}
    records[700] = {"text": ""}
    src = write_jsonl(tmp_path / "corpus.jsonl", records)
    shas = set()
    for workers in (0, 1, 2):
        prefix = tmp_path / f"w{workers}"
        assert main(["tokenize", "--input", str(src), "--output-prefix", str(prefix), "--workers", str(workers),
                     "--chunk-mb", "0.02"]) == 0
        shas.add((_sha(f"{prefix}.bin"), _sha(f"{prefix}.idx")))
        report = json.loads(open(f"{prefix}.report.json").read())
        assert report["documents"] == {"read": 1500, "written": 1498, "skipped": 2}
    assert len(shas) == 1


def test_report_describes_the_run(tmp_path):
    from vffn_pretrain.data.tokenizer import build_tokenizer

    docs = number_docs(20, seed=3)
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    assert main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
                 "--tokenizer", "null:100", "--workers", "0"]) == 0
    report = json.loads((tmp_path / "out.report.json").read_text())
    tok = build_tokenizer("null:100")
    assert report["command"] == "tokenize"
    assert report["inputs"][0]["path"] == str(src) and report["inputs"][0]["documents_read"] == 20
    assert report["documents"] == {"read": 20, "written": 20, "skipped": 0}
    assert report["tokens"] == sum(len(d.split()) + 1 for d in docs)
    assert report["tokenizer"]["name"] == "null:100" and report["tokenizer"]["vocab_size"] == 100
    assert report["tokenizer"]["hash"] == tok.hash
    assert report["dtype"] == "uint8"
    assert report["output"]["bin_sha256"] == _sha(tmp_path / "out.bin")
    assert report["elapsed_s"] >= 0 and report["started_at"] and report["finished_at"]


def test_help_documents_the_public_flags(capsys):
    for command, flags in [("tokenize", ["--input", "--output-prefix", "--tokenizer", "--workers", "--text-key",
                                         "--overwrite", "--strict", "--split-on-blank-lines"]),
                           ("train-tokenizer", ["--input", "--vocab-size", "--output"]),
                           ("merge", ["--input", "--output-prefix"]),
                           ("inspect", ["--tokenizer", "--verify", "--json"])]:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        for flag in flags:
            assert flag in out, (command, flag)


def test_console_script_runs():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    # The script sits next to the interpreter of the environment it was installed into (PATH may not have it).
    beside = Path(sys.executable).parent / "vffn-data"
    exe = str(beside) if beside.exists() else shutil.which("vffn-data")
    assert exe, "run `pip install -e . --no-deps` to install the vffn-data console script"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("tokenize", "train-tokenizer", "merge", "inspect"):
        assert command in out.stdout


def test_progress_bar_reports_documents_and_tokens(tmp_path, capsys):
    from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize

    src = write_jsonl(tmp_path / "a.jsonl", number_docs(200, seed=4))
    report = run_tokenize(TokenizeOptions([str(src)], str(tmp_path / "out"), tokenizer="null:100", progress=True,
                                          chunk_bytes=500))
    err = capsys.readouterr().err
    assert "tokenize" in err and "100%" in err
    assert report["documents"]["written"] == 200
