"""Bad input: skipped and counted (or errors with --strict), clear errors for files, nothing half-written."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_tools.cli import main
from tests.data.documents import read_docs, write_jsonl

NULL = ["--tokenizer", "null:100", "--workers", "0"]


def _bad_jsonl(path):
    """Line 2: malformed JSON; 3: missing field; 4: non-UTF-8 byte; 5: empty document; 6: whitespace-only
    document; 7: not an object; 8: text not a string; 9: blank line (ignored, not a document)."""
    lines = [
        b'{"text": "1 2"}',
        b'{"text": "3 4"',
        b'{"other": "5"}',
        b'{"text": "6 \xff 7"}',
        b'{"text": ""}',
        b'{"text": "  \\n "}',
        b'[1, 2]',
        b'{"text": 12}',
        b"",
        b'{"text": "8"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_records_are_skipped_and_counted_with_file_and_line(tmp_path):
    src = _bad_jsonl(tmp_path / "bad.jsonl")
    assert main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / "out"), *NULL]) == 0
    assert read_docs(str(tmp_path / "out")) == [[1, 2, 99], [8, 99]]
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["documents"] == {"read": 9, "written": 2, "skipped": 7}
    assert report["inputs"][0]["blank_lines_ignored"] == 1
    where = [(e["file"], e["line"], e["reason"]) for e in report["skipped"]["examples"]]
    assert where == [(str(src), 2, "malformed_json"), (str(src), 3, "missing_field"), (str(src), 4, "invalid_utf8"),
                     (str(src), 5, "empty_document"), (str(src), 6, "empty_document"),
                     (str(src), 7, "malformed_json"), (str(src), 8, "bad_field_type")]
    assert report["skipped"]["by_reason"] == {"bad_field_type": 1, "empty_document": 2, "invalid_utf8": 1,
                                              "malformed_json": 2, "missing_field": 1}
    assert "0xff" in report["skipped"]["examples"][2]["detail"]


@pytest.mark.parametrize("line, reason", [(2, "malformed_json"), (3, "missing_field"), (4, "invalid_utf8"),
                                          (5, "empty_document")])
def test_strict_makes_each_bad_record_an_error(tmp_path, capsys, line, reason):
    lines = _bad_jsonl(tmp_path / "all.jsonl").read_bytes().split(b"\n")
    src = tmp_path / "one.jsonl"
    src.write_bytes(lines[0] + b"\n" + lines[line - 1] + b"\n" + lines[-2] + b"\n")
    out = tmp_path / "out"
    assert main(["tokenize", "--input", str(src), "--output-prefix", str(out), "--strict", *NULL]) == 1
    err = capsys.readouterr().err
    assert f"{src}:2: {reason}" in err
    assert sorted(os.listdir(tmp_path)) == ["all.jsonl", "one.jsonl"]


def test_invalid_utf8_in_plain_text_is_skipped_with_its_line(tmp_path):
    src = tmp_path / "t.txt"
    src.write_bytes(b"1 2\n\n3 \xc3\x28 4\n5\n\n6\n")
    assert main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
                 "--split-on-blank-lines", *NULL]) == 0
    assert read_docs(str(tmp_path / "out")) == [[1, 2, 99], [6, 99]]
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert [(e["line"], e["reason"]) for e in report["skipped"]["examples"]] == [(3, "invalid_utf8")]


def test_tokenizer_failures_and_out_of_range_ids_are_skipped(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", ["1 2", "one two", "5 150", "7"])
    assert main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / "out"), *NULL]) == 0
    assert read_docs(str(tmp_path / "out")) == [[1, 2, 99], [7, 99]]
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert [(e["line"], e["reason"]) for e in report["skipped"]["examples"]] == [(2, "tokenize_error"),
                                                                                (3, "token_out_of_range")]


@pytest.mark.parametrize("make_input, message", [
    (lambda d: str(d / "missing.jsonl"), "input file not found"),
    (lambda d: str(d / "nothing-*.jsonl"), "no input file matches"),
    (lambda d: str(d), "not a regular file"),
    (lambda d: _write(d / "trunc.jsonl.gz", gzip.compress(b'{"text": "1"}\n' * 1000)[:-30]), "unreadable"),
    (lambda d: _write(d / "trunc.jsonl.zst", _zstd(b'{"text": "1"}\n' * 1000)[:-5]), "truncated zstd stream"),
    (lambda d: _write(d / "bad.jsonl.zst", _zstd(b'{"text": "1"}\n') + b"not zstd at all"), "corrupt zstd data"),
    (lambda d: _write(d / "bad.parquet", b"PAR1 this is not parquet"), "not a readable parquet file"),
    (lambda d: _write(d / "notes.csv", b"a,b\n"), "cannot tell the format"),
])
def test_unusable_input_file_is_a_clear_error_and_writes_nothing(tmp_path, capsys, make_input, message):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = write_jsonl(inputs / "good.jsonl", ["1 2"])
    out = tmp_path / "out"
    assert main(["tokenize", "--input", str(good), make_input(inputs), "--output-prefix", str(out), *NULL]) == 1
    assert message in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")]


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input_file(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", ["1"])
    src.chmod(0)
    assert main(["tokenize", "--input", str(src), "--output-prefix", str(tmp_path / "out"), *NULL]) == 1
    assert "not readable" in capsys.readouterr().err


def test_parquet_without_the_text_column(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["1"]}), tmp_path / "a.parquet")
    assert main(["tokenize", "--input", str(tmp_path / "a.parquet"), "--output-prefix", str(tmp_path / "out"),
                 *NULL]) == 1
    assert "no column 'text'" in capsys.readouterr().err


def test_existing_output_is_not_overwritten_without_overwrite(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", ["1 2"])
    out = str(tmp_path / "out")
    assert main(["tokenize", "--input", str(src), "--output-prefix", out, *NULL]) == 0
    before = {s: open(f"{out}.{s}", "rb").read() for s in ("bin", "idx", "report.json")}
    write_jsonl(src, ["3 4 5"])
    assert main(["tokenize", "--input", str(src), "--output-prefix", out, *NULL]) == 1
    assert "already exists" in capsys.readouterr().err
    assert {s: open(f"{out}.{s}", "rb").read() for s in before} == before
    assert main(["tokenize", "--input", str(src), "--output-prefix", out, "--overwrite", *NULL]) == 0
    assert read_docs(out) == [[3, 4, 5, 99]]


def test_interrupted_run_leaves_nothing_and_keeps_the_previous_output(tmp_path):
    from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize

    src = write_jsonl(tmp_path / "a.jsonl", [f"document {i}" for i in range(3000)])
    out = str(tmp_path / "out")
    write_jsonl(tmp_path / "old.jsonl", ["old"])
    run_tokenize(TokenizeOptions([str(tmp_path / "old.jsonl")], out))
    old = open(f"{out}.bin", "rb").read(), open(f"{out}.idx", "rb").read()

    seen = []

    def interrupt_after_two(result):
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    for workers in (0, 2):
        seen.clear()
        with pytest.raises(KeyboardInterrupt):
            run_tokenize(TokenizeOptions([str(src)], out, workers=workers, overwrite=True,
                                         chunk_bytes=1000, on_result=interrupt_after_two))
        assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "old.jsonl", "out.bin", "out.idx", "out.report.json"]
        assert (open(f"{out}.bin", "rb").read(), open(f"{out}.idx", "rb").read()) == old


def test_killed_run_leaves_no_prefix_that_looks_valid(tmp_path, jargon_blocks):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    src = write_jsonl(tmp_path / "big.jsonl", jargon_blocks * 8)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "data_tools.cli", "tokenize", "--input", str(src),
                             "--output-prefix", str(out), "--workers", "1", "--chunk-mb", "0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300  # generous: a loaded machine can take long to import torch
    try:
        # Kill it while it is writing: once the partial .bin has some data in it.
        while time.time() < deadline and proc.poll() is None:
            partial = [p for p in tmp_path.iterdir() if ".partial-" in p.name and p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.kill()
    finally:
        proc.wait()
        try:  # its worker processes, orphaned by the kill, would wait on their queue forever
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    names = [p.name for p in tmp_path.iterdir()]
    assert any(".partial-" in n for n in names)  # what a hard kill leaves behind, under non-prefix names
    assert "out.bin" not in names and "out.idx" not in names
    assert not IndexedDataset.exists(str(out))
