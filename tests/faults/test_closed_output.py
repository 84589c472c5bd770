"""Class 8 (storage), the output side: whoever reads a command's output goes away (`| head`, a closed terminal
pipe). The command carries on and ends as it would have; what it prints from then on is dropped."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from tests.training import trainer_runs as cases
from vffn_pretrain.process.streams import SurvivingStream


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is gone: every write to it fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def _run(argv: list[str], timeout: float = 300) -> int:
    out = _closed_pipe()
    try:
        proc = subprocess.run(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    finally:
        os.close(out)
    return proc.returncode


def test_a_stream_whose_reader_left_drops_its_output_and_never_raises():
    fd = _closed_pipe()
    stream = SurvivingStream(io.TextIOWrapper(io.FileIO(fd, "w"), write_through=False))
    assert stream.write("x" * 100_000) == 100_000  # larger than the buffer: written, and fails, at once
    assert stream.reader_gone
    stream.write("more\n")
    stream.flush()
    assert os.readlink(f"/proc/self/fd/{fd}") == os.devnull
    stream.close()


def test_a_hung_up_terminal_is_a_reader_gone_too_and_a_full_disk_is_not():
    import errno

    import pytest

    master, slave = os.openpty()
    os.close(master)  # the terminal went away: writes fail with EIO
    stream = SurvivingStream(io.TextIOWrapper(io.FileIO(slave, "w"), write_through=True))
    stream.writelines(["a\n", "b\n"])
    stream.flush()
    assert stream.reader_gone
    stream.close()
    full = SurvivingStream(io.TextIOWrapper(io.FileIO("/dev/full", "w"), write_through=True))
    with pytest.raises(OSError) as raised:
        full.write("x\n")
    assert raised.value.errno == errno.ENOSPC and not full.reader_gone  # a full disk is still an error
    full.close()


def test_the_trainer_finishes_its_run_when_its_output_is_a_closed_pipe(tmp_path):
    data = cases.make_dataset(tmp_path)
    run_dir = tmp_path / "run"
    code = _run([sys.executable, "-m", "vffn_pretrain.train", *cases.BASE, f"data.paths={data}",
                 f"data.cache_dir={tmp_path / 'cache'}", f"run_dir={run_dir}", "train.max_steps=3",
                 "train.eval_interval=2"])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["exit_code"] == 0 and summary["final_val_loss"] is not None
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000003"


def test_tools_finish_their_work_when_their_output_is_a_closed_pipe(tmp_path):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": f"{i} {i + 1} {i + 2}"}) + "\n"
                                                 for i in range(50)))
    prefix = tmp_path / "out" / "docs"
    assert _run([sys.executable, "-m", "data_tools.cli", "tokenize", "--input", str(tmp_path / "docs.jsonl"),
                 "--output-prefix", str(prefix), "--tokenizer", "null:600", "--workers", "0"]) == 0
    assert prefix.with_suffix(".bin").stat().st_size > 0 and prefix.with_suffix(".idx").is_file()
    assert _run([sys.executable, "-m", "vffn_pretrain.info", "model.num_layers=2"]) == 0
