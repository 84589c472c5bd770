"""`vffn-study` against a hostile user (issue 23, classes 2, 5, 7 and 9).

Catalogue rows (each a test below):

| class | case | what the user sees |
|---|---|---|
| 5 | Ctrl-C on `vffn-study run` while a trainer runs | the trainer saves and stops, no next run starts; exit 130, one line |
| 5 | kill -9 of `vffn-study run` while a trainer runs | the trainer saves and exits by itself; no process left |
| 9 | `report` on a summary.json with a wrong value, study.json with a wrong run entry, metrics.jsonl with a wrong record | exit 2, one line naming the file (and line) and key |
| 7 | `report` on a damaged summary.json / study.json that is not an object | exit 2, one line naming the file |
| 2 | `report --out` = the study directory / a run directory / a directory holding other files | exit 2, nothing written |
| 2 | `run --out` that contains the study file | exit 2 before anything runs |
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.processes import children, wait_until_gone
from tests.study.test_stats_report import _write_study
from tests.training import trainer_runs as cases
from vffn_pretrain.study.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ class 5
def _long_study(tmp: Path) -> Path:
    """One seed whose base trains far longer than the test waits, then one continued run."""
    prefix = cases.make_dataset(tmp, num_docs=100)
    overrides = [*cases.BASE, f"data.paths={prefix}", f"data.cache_dir={tmp / 'cache'}", "checkpoint.interval=1000"]
    study = tmp / "long.yaml"
    study.write_text(json.dumps({"name": "long", "seeds": [1], "variants": ["dense"], "base_steps": 100000,
                                 "continued_steps": 2, "overrides": overrides, "jobs": 1}))
    return study


def _start(study: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vffn_pretrain.study.cli", "run", str(study), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _training(proc: subprocess.Popen, metrics: Path, past: int = 0) -> int:
    """Wait until the trainer has logged more than `past` steps; returns the trainer's PID."""
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > past):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    (trainer,) = children(proc.pid)
    return trainer


def test_ctrl_c_stops_the_whole_study_and_kill_9_leaves_no_trainer(tmp_path):
    study, out = _long_study(tmp_path), tmp_path / "out"
    base = out / "base" / "seed1"
    proc = _start(study, out)
    try:
        trainer = _training(proc, base / "metrics.jsonl")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the foreground group
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "vffn-study: interrupted; rerun the same command to resume"
    assert "start continued" not in stdout and "study: base/seed1 stopped (exit 3)" in stdout
    assert not wait_until_gone(trainer, 30)
    assert json.loads((base / "summary.json").read_text())["exit_code"] == 3  # saved, resumable
    assert not (out / "vffn-study.lock").exists()

    steps = len((base / "metrics.jsonl").read_text().splitlines())
    proc = _start(study, out)  # resumes the base
    try:
        trainer = _training(proc, base / "metrics.jsonl", past=steps)
        proc.kill()
        proc.wait()
        survivors = wait_until_gone(trainer, 90)  # the trainer saves on its SIGTERM, then exits
    finally:
        if wait_until_gone(trainer, 0):
            os.killpg(trainer, signal.SIGKILL)
    assert not survivors, survivors
    assert json.loads((base / "summary.json").read_text())["exit_code"] == 3


# ------------------------------------------------------------------------------------------------ class 9 and 7
def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage, named", [
    (lambda root: _edit_json(root / "continued/dense/seed1/summary.json",
                             lambda d: d.update(final_val_loss="low")),
     "continued/dense/seed1/summary.json: key 'final_val_loss' must be a positive finite number (got 'low')"),
    (lambda root: _edit_json(root / "continued/versatile/seed2/summary.json",
                             lambda d: d.update(eval_loop_mix="most")),
     "continued/versatile/seed2/summary.json: key 'eval_loop_mix' must be a list of fractions"),
    (lambda root: _edit_json(root / "study.json", lambda d: d["runs"][2].update(seed="one")),
     "study.json: key 'runs[2].seed' must be an integer (got 'one')"),
    (lambda root: _edit_json(root / "study.json", lambda d: d["runs"].__setitem__(0, 7)),
     "study.json: key 'runs[0]' must be an object (got 7)"),
    (lambda root: (root / "base/seed1/metrics.jsonl").write_text('{"step": 5, "val_loss": "x"}\n'),
     "base/seed1/metrics.jsonl:1: key 'val_loss' must be a finite number (got 'x')"),
    (lambda root: (root / "base/seed1/metrics.jsonl").write_text('{"step": "five", "val_loss": 1.0}\n'),
     "base/seed1/metrics.jsonl:1: key 'step' must be a step number"),
    (lambda root: (root / "continued/moe/seed3/summary.json").write_text('{"exit_code": 0, "st'),
     "continued/moe/seed3/summary.json: not readable as JSON"),
    (lambda root: (root / "continued/moe/seed3/summary.json").write_text("[1, 2]"),
     "continued/moe/seed3/summary.json: expected a JSON object, got list"),
    (lambda root: (root / "study.json").write_text('"a study"'),
     "study.json: not a study record (no 'runs' list)"),
], ids=["summary-value", "loop-mix", "run-seed", "run-entry", "metrics-value", "metrics-step", "summary-cut",
        "summary-list", "study-string"])
def test_report_names_the_file_and_key_of_a_malformed_record(damage, named, tmp_path, capsys):
    _write_study(tmp_path)
    damage(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    line = _one_line(capsys)
    assert line.startswith("vffn-study: error: ") and f"{tmp_path}/{named}" in line, line
    assert not (tmp_path / "report").exists()


def test_report_out_never_overlaps_what_it_reads_or_foreign_files(tmp_path, capsys):
    _write_study(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("x")
    run_dir = tmp_path / "continued" / "dense" / "seed1"
    for out, words in ((tmp_path, f"--out {tmp_path} contains the study file {tmp_path / 'study.json'}"),
                       (run_dir, f"--out {run_dir} contains the study file {run_dir / 'summary.json'}"),
                       (mine, "is not a study report")):
        assert main(["report", str(tmp_path), "--out", str(out)]) == 2
        assert words in _one_line(capsys)
    assert (mine / "notes.md").read_text() == "x" and sorted(p.name for p in run_dir.iterdir()) == [
        "metrics.jsonl", "summary.json"]
    assert main(["report", str(tmp_path)]) == 0  # a report directory is replaced: twice
    assert main(["report", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("report*")) == ["report"]


def test_run_out_containing_the_study_file_is_refused(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text("name: x\nseeds: [1]\nvariants: [dense]\nbase_steps: 1\ncontinued_steps: 1\noverrides: []\n")
    assert main(["run", str(study), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} contains the study file {study}" in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
