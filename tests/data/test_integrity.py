"""Truncated or corrupted .bin/.idx files are detected when opened, with the file and the problem named."""

from __future__ import annotations

import shutil
import struct

import pytest

from data_tools.cli import main
from tests.data.documents import number_docs, write_jsonl
from vffn_pretrain.data.indexed import CorruptDatasetError, verify_prefix


@pytest.fixture
def prefix(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", number_docs(40, seed=2))
    out = str(tmp_path / "data")
    assert main(["tokenize", "--input", str(src), "--output-prefix", out, "--tokenizer", "null:300",
                 "--workers", "0"]) == 0
    return out


def _patch(path, offset, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _truncate(path, drop: int):
    with open(path, "r+b") as f:
        f.truncate(max(0, f.seek(0, 2) - drop))


def test_sound_dataset_passes(prefix):
    info = verify_prefix(prefix)
    assert info.num_documents == 40 and info.dtype.name == "uint16"


# Offsets in the .idx: 0 magic, 9 version, 17 dtype code, 18 sequence count, 26 document count, 34 lengths...
@pytest.mark.parametrize("damage, file, message", [
    (lambda p: _truncate(p + ".bin", 2), ".bin", "data file truncated"),
    (lambda p: open(p + ".bin", "ab").write(b"\0\0"), ".bin", "longer than its index"),
    (lambda p: _truncate(p + ".idx", 8), ".idx", "index truncated"),
    (lambda p: _truncate(p + ".idx", 10**6), ".idx", "0 bytes, shorter than the 34-byte header"),
    (lambda p: _patch(p + ".idx", 0, b"GARBAGE!!"), ".idx", "bad magic"),
    (lambda p: _patch(p + ".idx", 9, struct.pack("<Q", 7)), ".idx", "unsupported index version 7"),
    (lambda p: _patch(p + ".idx", 17, b"\x63"), ".idx", "unknown dtype code 99"),
    (lambda p: _patch(p + ".idx", 18, struct.pack("<Q", 41)), ".idx", "index truncated"),
    (lambda p: _patch(p + ".idx", 34, struct.pack("<i", 1000)), ".idx", "pointers inconsistent"),
    (lambda p: _patch(p + ".idx", 34, struct.pack("<i", -3)), ".idx", "negative sequence length"),
    (lambda p: _patch(p + ".idx", 34 + 40 * 12 + 8, struct.pack("<q", 5)), ".idx", "not monotonic"),
    (lambda p: _patch(p + ".idx", 34 + 40 * 12, struct.pack("<q", 3)), ".idx", "document index runs from 3"),
    (lambda p: __import__("os").remove(p + ".bin"), ".bin", "file not found"),
])
def test_damage_is_detected_and_named(prefix, damage, file, message):
    damage(prefix)
    with pytest.raises(CorruptDatasetError) as err:
        verify_prefix(prefix)
    assert f"{prefix}{file}" in str(err.value)
    assert message in str(err.value)


def test_inspect_reports_damage_as_an_error(prefix, capsys):
    _truncate(prefix + ".bin", 2)
    assert main(["inspect", prefix]) == 1
    assert f"{prefix}.bin: data file truncated" in capsys.readouterr().err


def test_verify_catches_changed_token_data_via_the_report_checksum(prefix, capsys):
    assert main(["inspect", prefix, "--verify"]) == 0
    _patch(prefix + ".bin", 10, b"\x01\x02")  # same size: structurally still sound
    verify_prefix(prefix)
    assert main(["inspect", prefix, "--verify"]) == 1
    assert f"{prefix}.bin: checksum differs" in capsys.readouterr().err


def test_builder_names_the_config_key_for_a_damaged_dataset(prefix, tmp_path, gloo_group):
    from vffn_pretrain.data.builder import build_datasets
    from vffn_pretrain.data.config import DataConfig
    from vffn_pretrain.data.tokenizer import build_tokenizer

    copy = str(tmp_path / "copy")
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix + suffix, copy + suffix)
    _truncate(copy + ".bin", 4)
    for check_token_ids in (True, False):
        cfg = DataConfig.from_dict({"paths": copy, "tokenizer": "null:300", "cache_dir": str(tmp_path / "cache"),
                                    "check_token_ids": check_token_ids})
        with pytest.raises(ValueError, match=r"data\.paths: .*copy\.bin: data file truncated"):
            build_datasets(cfg, seq_length=16, seed=1, num_samples=(10, 0, 0),
                           tokenizer=build_tokenizer("null:300"), padded_vocab_size=512)
