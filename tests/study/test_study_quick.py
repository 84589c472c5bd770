"""`vffn-study run conf/study/table1_cpu.yaml --quick` end to end: 2 seeds x (base + dense + versatile) real
trainer runs on the bundled corpus, the report, skipping finished runs, resuming an unfinished one, and the
errors for bad study files and a directory holding another study."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vffn_pretrain.study.cli import main

CONF = Path(__file__).resolve().parents[2] / "conf" / "study" / "table1_cpu.yaml"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["run", str(CONF), "--out", str(out), "--quick"]) == 0
    return out


def test_quick_study_trains_continues_and_reports(quick_study):
    out = quick_study
    for seed in (1, 2):
        base = json.loads((out / "base" / f"seed{seed}" / "summary.json").read_text())
        assert base["variant"] == "dense" and base["exit_code"] == 0 and base["steps"] == 4
        for variant in ("dense", "versatile"):
            run_dir = out / "continued" / variant / f"seed{seed}"
            s = json.loads((run_dir / "summary.json").read_text())
            assert s["variant"] == variant and s["exit_code"] == 0 and s["steps"] == 4
            cfg = OmegaConf.load(run_dir / "config.yaml")
            # Same seed as its base (data order, noise), started from the base's checkpoints.
            assert cfg.train.seed == seed
            assert cfg.train.init_from == str(out / "base" / f"seed{seed}" / "checkpoints")
            # Continuing means starting below where a fresh model starts: its first evaluation beats the
            # base's first one.
            first = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                     if "val_loss" in x][0]
            base_first = [json.loads(x) for x in (out / "base" / f"seed{seed}" / "metrics.jsonl").read_text()
                          .splitlines() if "val_loss" in x][0]
            assert first["val_loss"] < base_first["val_loss"]
    md = (out / "report" / "report.md").read_text()
    assert "| dense | 2 |" in md and "| versatile | 2 |" in md and "| base | 2 |" in md
    data = json.loads((out / "report" / "report.json").read_text())
    assert data["missing"] == []
    assert {c["claim"] for c in data["claims"]} >= {"versatile < dense", "dense < base", "versatile < base"}


def test_rerun_skips_finished_and_resumes_unfinished(quick_study, capsys):
    out = quick_study
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    # Make one continued run unfinished: as if it had stopped before writing its summary.
    victim = out / "continued" / "versatile" / "seed2" / "summary.json"
    victim.unlink()
    capsys.readouterr()
    assert main(["run", str(CONF), "--out", str(out), "--quick"]) == 0
    log = capsys.readouterr().out
    assert "5 of 6 runs already finished; 1 to run" in log
    assert "start continued/versatile/seed2 (resuming)" in log
    assert json.loads(victim.read_text())["exit_code"] == 0
    for p, t in stamps.items():
        if p != victim:
            assert p.stat().st_mtime_ns == t, f"{p} was rewritten"


def test_directory_of_another_study_is_refused(quick_study, tmp_path, capsys):
    other = OmegaConf.load(CONF)
    other.quick.base_steps = 5  # another plan for the same directory
    OmegaConf.save(other, tmp_path / "other.yaml")
    assert main(["run", str(tmp_path / "other.yaml"), "--out", str(quick_study), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a study with other runs" in err[0]


def test_directory_in_use_by_a_live_study_is_refused(tmp_path, capsys):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "vffn-study.lock").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": sleeper.pid, "since": "2024-01-01T00:00:00"}))
        assert main(["run", str(CONF), "--out", str(tmp_path / "out"), "--quick"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"vffn-study: error: {tmp_path / 'out'} is in use by PID {sleeper.pid} on this host "
                       f"({socket.gethostname()}, since 2024-01-01T00:00:00): another vffn-study run is working "
                       "on it; wait for it or stop it"]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vffn-study.lock"]
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("text, message", [
    ("name: x\nseeds: [1]\nvariants: [dense]\nbase_steps: 1\ncontinued_steps: 1\noverrides: []\ncolour: red\n",
     "key 'colour' is not a study key"),
    ("name: x\nseeds: [1, 1]\nvariants: [dense]\nbase_steps: 1\ncontinued_steps: 1\noverrides: []\n",
     "key 'seeds' must be a non-empty list of distinct integers"),
    ("name: x\nseeds: [1]\nvariants: [dense, kloop3]\nbase_steps: 1\ncontinued_steps: 1\noverrides: []\n",
     "key 'variants' names 'kloop3', which is not a conf/ffn group"),
    ("name: x\nseeds: [1]\nvariants: [dense]\nbase_steps: 0\ncontinued_steps: 1\noverrides: []\n",
     "key 'base_steps' must be a positive integer"),
    ("name: x\nseeds: [1]\nvariants: [dense]\nbase_steps: 1\ncontinued_steps: 1\noverrides: []\n"
     "corpus: {name: debian-docs-en, dir: /nonexistent/corpus}\n",
     "has no manifest.json; build it with `vffn-data corpus build debian-docs-en --out /nonexistent/corpus`"),
])
def test_bad_study_file_is_one_line_exit_2(tmp_path, capsys, text, message):
    conf = tmp_path / "s.yaml"
    conf.write_text(text)
    assert main(["run", str(conf), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vffn-study: error: {conf}") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_report_shows_the_starting_loss_when_runs_evaluated_at_step_0(quick_study, tmp_path):
    """train.eval_at_start gives a step-0 record; the report then has a column for the converted model's loss."""
    from vffn_pretrain.study.collect import read_study
    from vffn_pretrain.study.report import analyse, markdown

    meta, results = read_study(quick_study)
    assert "after conversion" not in markdown(meta, analyse(results))  # the quick study does not evaluate at 0
    for r in results:
        r.curve = [(0, 7.0 if r.variant == "versatile" else 6.0), *r.curve]
    lines = markdown(meta, analyse(results)).splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| variant |"))
    header, rule = lines[i], lines[i + 1]
    rows = [line for line in lines if line.startswith(("| versatile |", "| dense |"))]
    assert "val loss at step 0 (after conversion)" in header and rule.startswith("|---|")
    assert header.count("|") == rule.count("|")
    column = header.split(" | ").index("val loss at step 0 (after conversion)")
    assert {row.split(" | ")[0]: row.split(" | ")[column] for row in rows} == {"| versatile": "7.0000",
                                                                             "| dense": "6.0000"}
