"""`vffn-data`'s outputs (issue classes 2, 3, 5 and 7): no command writes over what it reads, one writer per
output, a stop signal leaves nothing behind, a damaged file is one line naming it.

Catalogue rows (each a test below):

| class | case | what the user sees |
|---|---|---|
| 2 | tokenize --output-prefix whose .bin is the --input (--format text), --overwrite | exit 1, "is --input"; input intact |
| 2 | tokenize --output-prefix whose report is the tokenizer file | exit 1, "is the tokenizer"; tokenizer intact |
| 2 | tokenize --output-prefix through a symlink onto the input | exit 1; input intact |
| 2 | merge --output-prefix equal to an --input, --overwrite | exit 1, "is --input"; dataset intact |
| 2 | train-tokenizer --output equal to its --input, --overwrite | exit 1, "is --input"; input intact |
| 2 | train-tokenizer --output an existing file that is not a tokenizer, --overwrite | exit 1, "is not a tokenizer.json"; file intact |
| 2 | corpus build --out equal to --deb-dir / containing --cache, --overwrite | exit 1, "is --deb-dir" / "contains --cache"; nothing deleted |
| 2 | corpus build --overwrite onto a directory holding other files | exit 1, "is not a corpus build"; files intact |
| 2 | outputs get the user's umask | 0o664 files under umask 002 |
| 2 | a stale train-tokenizer partial of a killed run | removed by the next run, with a line |
| 2 | tokenize --output-prefix "" / "out/" / "." | exit 1, "must end in a file name"; no hidden .bin written |
| 3 | tokenize while another live process holds the prefix's lock | exit 1, "is in use by PID"; nothing written |
| 3 | a lock left by a dead process | taken over with a line; the run succeeds; no lock left |
| 3 | a lock of another host | exit 1, names the host and the lock to remove |
| 3 | the lock taken by another writer during the run | nothing committed, "took it over"; no partial |
| 3+5 | a second real tokenize while the first runs; then SIGTERM to the first | second: exit 1; first: exit 130, one line, no file left |
| 7 | damaged tokenizer.json given to tokenize / inspect | exit 1, one line naming the file |
| 7 | an input report that is JSON but not an object (merge) | merged as if it had no report |
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.clis import run_cli
from tests.faults.processes import wait_until_gone
from tests.training import trainer_runs as cases


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _ids(path: Path, lines: int = 3) -> None:
    path.write_text("".join(json.dumps({"text": f"{i} {i + 1} {i + 2}"}) + "\n" for i in range(lines)))


@pytest.fixture
def d(tmp_path) -> Path:
    _ids(tmp_path / "ids.jsonl")
    return tmp_path


TOK = ["tokenize", "--tokenizer", "null:100", "--workers", "0", "--no-progress"]


def _run(argv, capsys, monkeypatch):
    return run_cli("vffn-data", [str(a) for a in argv], capsys, monkeypatch)


# ---------------------------------------------------------------------------------------------- class 2
def test_tokenize_output_over_its_input_is_refused(d, capsys, monkeypatch):
    src = d / "x.bin"
    src.write_text("1 2 3\n")
    out = _run([*TOK, "--format", "text", "--input", src, "--output-prefix", d / "x", "--overwrite"], capsys,
               monkeypatch)
    assert out.code == 1
    assert f"--output-prefix {src} is --input {src}" in out.one_line_error()
    assert src.read_text() == "1 2 3\n" and sorted(p.name for p in d.iterdir()) == ["ids.jsonl", "x.bin"]


def test_tokenize_report_over_the_tokenizer_is_refused(d, capsys, monkeypatch):
    from vffn_pretrain.data.assets import BUNDLED_TOKENIZER

    tok = d / "t.report.json"
    tok.write_bytes(BUNDLED_TOKENIZER.read_bytes())
    out = _run(["tokenize", "--tokenizer", tok, "--workers", "0", "--input", d / "ids.jsonl", "--output-prefix",
                d / "t", "--overwrite"], capsys, monkeypatch)
    assert out.code == 1 and "is the tokenizer" in out.one_line_error()
    assert tok.read_bytes() == BUNDLED_TOKENIZER.read_bytes()


def test_tokenize_through_a_symlink_onto_its_input_is_refused(d, capsys, monkeypatch):
    (d / "data").mkdir()
    src = d / "data" / "x.bin"
    src.write_text("1 2 3\n")
    (d / "link").symlink_to(d / "data")
    out = _run([*TOK, "--format", "text", "--input", src, "--output-prefix", d / "link" / "x", "--overwrite"],
               capsys, monkeypatch)
    assert out.code == 1 and "is --input" in out.one_line_error()
    assert src.read_text() == "1 2 3\n"


@pytest.mark.parametrize("name, text", [("out.bin", "plain text\n"), ("out.idx", "not an index\n"),
                                        ("out.report.json", '{"mine": 1}\n')])
def test_tokenize_overwrite_replaces_a_dataset_never_a_foreign_file_of_its_name(d, name, text, capsys,
                                                                               monkeypatch):
    """--overwrite replaces an earlier dataset of the prefix, never a file of another kind that has one of its
    names (a text file called out.bin, a JSON of the user's called out.report.json)."""
    foreign = d / name
    foreign.write_text(text)
    out = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "out", "--overwrite"], capsys, monkeypatch)
    assert out.code == 1 and f"{foreign} already exists and is not a file of an indexed dataset" in \
        out.one_line_error()
    assert foreign.read_text() == text and sorted(p.name for p in d.iterdir()) == sorted(["ids.jsonl", name])
    # A dataset of that prefix, written before, is replaced.
    foreign.unlink()
    assert _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "out"], capsys, monkeypatch).code == 0
    assert _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "out", "--overwrite"], capsys,
                monkeypatch).code == 0


def test_a_full_disk_while_tokenizing_names_the_output_and_commits_nothing(d, capsys, monkeypatch):
    """A write() that fails for a full disk carries no file name: the line names the output being written."""
    import errno

    from vffn_pretrain.data.tokenizing import writer

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.CompactIndexedDatasetBuilder, "_write", full)
    out = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "out"], capsys, monkeypatch)
    assert out.code == 1
    assert out.one_line_error() == (f"vffn-data: error: the disk is full while writing --output-prefix {d / 'out'} "
                                    "(No space left on device); nothing was committed there")
    assert sorted(p.name for p in d.iterdir()) == ["ids.jsonl"]


def test_merge_into_its_own_input_is_refused(d, capsys, monkeypatch):
    prefix = cases.make_dataset(d, num_docs=5)
    before = Path(prefix + ".bin").read_bytes()
    out = _run(["merge", "--input", prefix, prefix, "--output-prefix", prefix, "--overwrite"], capsys, monkeypatch)
    assert out.code == 1 and "is --input" in out.one_line_error()
    assert Path(prefix + ".bin").read_bytes() == before


def test_train_tokenizer_over_its_input_or_a_foreign_file_is_refused(d, capsys, monkeypatch):
    src = d / "ids.jsonl"
    before = src.read_text()
    args = ["train-tokenizer", "--vocab-size", "300", "--input", src, "--overwrite", "--output"]
    out = _run([*args, src], capsys, monkeypatch)
    assert out.code == 1 and f"--output {src} is --input {src}" in out.one_line_error()
    notes = d / "notes.json"
    notes.write_text('{"mine": true}')
    out = _run([*args, notes], capsys, monkeypatch)
    assert out.code == 1 and "is not a tokenizer.json" in out.one_line_error()
    assert src.read_text() == before and notes.read_text() == '{"mine": true}'


def test_corpus_build_never_deletes_its_package_cache_or_foreign_files(d, capsys, monkeypatch):
    debs, cache = d / "debs", d / "work" / "cache"
    debs.mkdir()
    (debs / "keep.deb").write_text("x")
    cache.mkdir(parents=True)
    (cache / "keep.deb").write_text("x")
    build = ["corpus", "build", "debian-docs-en", "--overwrite"]
    out = _run([*build, "--out", debs, "--deb-dir", debs], capsys, monkeypatch)
    assert out.code == 1 and f"--out {debs} is --deb-dir {debs}" in out.error_line()
    out = _run([*build, "--out", d / "work", "--cache", cache], capsys, monkeypatch)
    assert out.code == 1 and f"--out {d / 'work'} contains --cache {cache}" in out.error_line()
    mine = d / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    out = _run([*build, "--out", mine, "--deb-dir", debs], capsys, monkeypatch)
    assert out.code == 1 and "is not a corpus build" in out.error_line()
    assert all((p / n).exists() for p, n in ((debs, "keep.deb"), (cache, "keep.deb"), (mine, "thesis.tex")))


def test_outputs_get_the_users_umask(d, capsys, monkeypatch):
    old = os.umask(0o002)
    try:
        out = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "o"], capsys, monkeypatch)
    finally:
        os.umask(old)
    assert out.code == 0, out.out
    for name in ("o.bin", "o.idx", "o.report.json"):
        assert (d / name).stat().st_mode & 0o777 == 0o664, name


def test_a_killed_runs_partial_tokenizer_is_removed_by_the_next_run(d, capsys, monkeypatch):
    stale = d / f"tok.json.partial-{_dead_pid()}"
    stale.write_text("half a tokenizer")
    out = _run(["train-tokenizer", "--vocab-size", "300", "--input", d / "ids.jsonl", "--output", d / "tok.json"],
               capsys, monkeypatch)
    assert out.code == 0, out.out
    assert f"removed {stale}" in out.out and not stale.exists()
    assert sorted(p.name for p in d.iterdir()) == ["ids.jsonl", "tok.json", "tok.report.json"]


@pytest.mark.parametrize("prefix", ["", "out/", "."], ids=["empty", "a-directory", "dot"])
def test_a_prefix_without_a_file_name_is_refused(d, prefix, capsys, monkeypatch):
    monkeypatch.chdir(d)
    out = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", prefix], capsys, monkeypatch)
    assert out.code == 1 and "must end in a file name" in out.one_line_error()
    assert sorted(p.name for p in d.iterdir()) == ["ids.jsonl"]  # no hidden .bin/.idx


# ---------------------------------------------------------------------------------------------- class 3
def _lock(path: Path, host: str, pid: int) -> None:
    path.write_text(json.dumps({"host": host, "pid": pid, "since": "2024-01-01T00:00:00"}))


def test_a_prefix_held_by_a_live_process_is_refused(d, capsys, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(d / "o.lock", socket.gethostname(), holder.pid)
        out = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "o"], capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert out.code == 1
    assert f"--output-prefix {d / 'o'} is in use by PID {holder.pid} on this host" in out.one_line_error()
    assert sorted(p.name for p in d.iterdir()) == ["ids.jsonl", "o.lock"]


def test_a_dead_processs_lock_is_taken_over_and_another_hosts_is_refused(d, capsys, monkeypatch):
    dead = _dead_pid()
    _lock(d / "o.lock", socket.gethostname(), dead)
    out = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "o"], capsys, monkeypatch)
    assert out.code == 0, out.out
    assert f"taking over the lock of --output-prefix {d / 'o'} from PID {dead}" in out.out
    assert not (d / "o.lock").exists() and (d / "o.bin").exists()

    _lock(d / "p.lock", "elsewhere", 1)
    out = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "p"], capsys, monkeypatch)
    assert out.code == 1
    assert f"in use by PID 1 on host elsewhere (since 2024-01-01T00:00:00); if that process is gone, remove " \
           f"{d / 'p.lock'}" in out.one_line_error()


def test_a_lock_taken_over_during_the_run_stops_the_commit(d):
    from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize
    from vffn_pretrain.outputs.lock import OutputInUse

    def steal(_result):
        _lock(d / "o.lock", socket.gethostname(), os.getppid())  # another live writer claims it meanwhile

    with pytest.raises(OutputInUse, match="took it over; nothing was committed"):
        run_tokenize(TokenizeOptions(inputs=[str(d / "ids.jsonl")], output_prefix=str(d / "o"), tokenizer="null:100",
                                     on_result=steal))
    assert sorted(p.name for p in d.iterdir()) == ["ids.jsonl", "o.lock"]  # the other writer's lock only


def test_two_tokenizers_on_one_prefix_then_sigterm_stops_the_first_cleanly(d, capsys, monkeypatch):
    big = d / "big.jsonl"
    big.write_text((json.dumps({"text": " ".join(str(i % 97) for i in range(2000))}) + "\n") * 4000)
    cmd = [sys.executable, "-m", "data_tools.cli", *TOK[:3], "--workers", "1", "--chunk-mb", "0.05",
           "--no-progress", "--input", str(big), "--output-prefix", str(d / "o")]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(d.glob("o.bin.partial-*")):  # started writing
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = _run([*TOK, "--input", d / "ids.jsonl", "--output-prefix", d / "o"], capsys, monkeypatch)
        assert second.code == 1
        assert f"is in use by PID {first.pid} on this host" in second.one_line_error()
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        survivors = wait_until_gone(first.pid, 30)
        if survivors:
            os.killpg(first.pid, signal.SIGKILL)
    assert not survivors, survivors
    assert first.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "vffn-data: interrupted by SIGTERM; no output was written"
    assert sorted(p.name for p in d.iterdir()) == ["big.jsonl", "ids.jsonl"]  # no partial, no lock


# ---------------------------------------------------------------------------------------------- class 7
@pytest.mark.parametrize("damage", ['{"model": {"type": "BPE", "vocab": {', "", "[1, 2]"],
                         ids=["truncated", "empty", "not-a-tokenizer"])
def test_a_damaged_tokenizer_file_is_one_line_naming_it(d, damage, capsys, monkeypatch):
    tok = d / "tokenizer.json"
    tok.write_text(damage)
    out = _run(["tokenize", "--tokenizer", tok, "--workers", "0", "--input", d / "ids.jsonl", "--output-prefix",
                d / "o"], capsys, monkeypatch)
    assert out.code == 1 and str(tok) in out.one_line_error()
    prefix = cases.make_dataset(d, num_docs=3)
    out = _run(["inspect", prefix, "--tokenizer", tok], capsys, monkeypatch)
    assert out.code == 1 and str(tok) in out.one_line_error()


def test_an_input_report_that_is_not_an_object_is_ignored_by_merge(d, capsys, monkeypatch):
    prefix = cases.make_dataset(d, num_docs=3)
    Path(prefix + ".report.json").write_text("7")
    out = _run(["merge", "--input", prefix, "--output-prefix", d / "m"], capsys, monkeypatch)
    assert out.code == 0, out.out
