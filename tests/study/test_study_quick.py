"""`vffn-study run conf/study/round2_cpu.yaml --quick` end to end: 2 seeds x (base, dense and versatile_blend
continued, versatile from scratch for the base's tokens, dense and versatile from scratch for base + continued
tokens): real trainer runs on the bundled corpus, the report, skipping finished runs, resuming an unfinished
one, and the errors for bad study files and a directory holding another study. The round-1 study file's plan is
checked with --dry-run."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vffn_pretrain.study.cli import main

CONF = Path(__file__).resolve().parents[2] / "conf" / "study" / "round2_cpu.yaml"
ROUND1 = CONF.parent / "table1_cpu.yaml"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """The quick study, run as a study split over two sessions is: seed 2 alone (--seeds 2), then the whole
    study, which skips seed 2's finished runs."""
    out = tmp_path_factory.mktemp("study")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", str(CONF), "--out", str(out), "--quick", "--seeds", "2"]) == 0
    assert "seeds 2 finished; 6 runs of seeds 1 remain (the report is written when every seed has finished)" \
        in printed.getvalue()
    assert sorted(p.parent.name for p in out.rglob("summary.json")) == ["seed2"] * 6
    assert not (out / "base" / "seed1").exists() and not (out / "report").exists()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", str(CONF), "--out", str(out), "--quick"]) == 0
    assert "6 of 12 runs already finished; 6 to run" in printed.getvalue()
    return out


def _evals(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r}


def test_quick_study_trains_continues_and_reports(quick_study):
    out = quick_study
    for seed in (1, 2):
        base = json.loads((out / "base" / f"seed{seed}" / "summary.json").read_text())
        assert base["variant"] == "dense" and base["exit_code"] == 0 and base["steps"] == 4
        for variant, kind in (("dense", "dense"), ("versatile_blend", "versatile")):
            run_dir = out / "continued" / variant / f"seed{seed}"
            s = json.loads((run_dir / "summary.json").read_text())
            assert s["variant"] == kind and s["exit_code"] == 0 and s["steps"] == 4
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
        # The blend-in variant is versatile plus its ramp (its group's overrides, then its own), and starts
        # exactly where dense does: the converted model computes the dense function at step 0.
        cfg = OmegaConf.load(out / "continued" / "versatile_blend" / f"seed{seed}" / "config.yaml")
        assert cfg.ffn.blend_in_steps == 2 and cfg.ffn.tau_decay_to_end
        blend = _evals(out / "continued" / "versatile_blend" / f"seed{seed}")
        assert blend[0]["val_loss"] == pytest.approx(_evals(out / "continued" / "dense" / f"seed{seed}")[0]["val_loss"],
                                                     abs=1e-5)
        assert all("val_loss_train_mode" in e for e in blend.values())
        # From scratch: no init_from, the base's seed, for the base's steps and for base + continued steps.
        for arm, steps in (("scratch", 4), ("scratch_long", 8)):
            for variant in ("dense", "versatile"):
                run_dir = out / arm / variant / f"seed{seed}"
                if arm == "scratch" and variant == "dense":
                    assert not run_dir.exists()  # the base is this run
                    continue
                cfg = OmegaConf.load(run_dir / "config.yaml")
                assert cfg.train.init_from is None and cfg.train.seed == seed and cfg.train.max_steps == steps
    report = out / "report"
    md = (report / "report.md").read_text()
    assert "| dense | 2 |" in md and "| versatile_blend | 2 |" in md and "| base | 2 |" in md
    assert "| dense (the base) | 2 |" in md and "From scratch for base + continued tokens" in md
    assert str(out) not in md and "/tmp" not in md  # no path of the machine
    data = json.loads((report / "report.json").read_text())
    assert data["missing"] == []
    assert {(r["arm"], r["variant"]) for r in data["rows"]} == {
        ("base", "dense"), ("continued", "dense"), ("continued", "versatile_blend"), ("scratch", "dense"),
        ("scratch", "versatile"), ("scratch_long", "dense"), ("scratch_long", "versatile")}
    assert {c["claim"] for c in data["claims"]} >= {
        "versatile_blend < dense", "dense < base", "scratch:versatile < scratch:dense",
        "scratch_long:versatile < scratch_long:dense", "dense < scratch_long:dense"}
    row = next(r for r in data["rows"] if r["variant"] == "versatile_blend")
    assert set(row["per_seed"]) == {"1", "2"} and row["start_vs_dense"] == pytest.approx(0.0, abs=1e-5)
    assert [p["step"] for p in data["gaps"]["continued"]["versatile_blend"]["curve"]] == [0, 2, 4]
    for png in ("final_loss.png", "delta_vs_dense.png", "gap_over_tokens.png", "val_curves.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_round1_study_file_still_plans_its_runs(capsys):
    assert main(["run", str(ROUND1), "--out", "/nonexistent/round1", "--quick", "--dry-run"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["base/seed1", "base/seed2", "continued/dense/seed1", "continued/versatile/seed1",
                     "continued/dense/seed2", "continued/versatile/seed2"]


def test_rerun_skips_finished_and_resumes_unfinished(quick_study, tmp_path, capsys):
    """On a copy of the study at another path (a study moved, or seeds run elsewhere and copied together): the
    record is rewritten for the new path, finished runs are skipped, the unfinished one resumes there."""
    out = tmp_path / "moved"
    shutil.copytree(quick_study, out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    # Make one continued run unfinished: as if it had stopped before writing its summary.
    victim = out / "continued" / "versatile_blend" / "seed2" / "summary.json"
    victim.unlink()
    capsys.readouterr()
    assert main(["run", str(CONF), "--out", str(out), "--quick"]) == 0
    log = capsys.readouterr().out
    assert f"study: {out / 'study.json'} was written for {quick_study}; it now names {out} (same runs)" in log
    assert json.loads((out / "study.json").read_text())["runs"][0]["run_dir"] == str(out / "base" / "seed1")
    assert "11 of 12 runs already finished; 1 to run" in log
    assert "start continued/versatile_blend/seed2 (resuming)" in log
    assert json.loads(victim.read_text())["exit_code"] == 0
    for p, t in stamps.items():
        if p != victim:
            assert p.stat().st_mtime_ns == t, f"{p} was rewritten"
    assert (quick_study / "continued" / "versatile_blend" / "seed2" / "summary.json").is_file()  # the original


def test_a_copied_study_is_reported_from_where_it_is(quick_study, tmp_path):
    """The report reads the runs in the directory it is given, never at the paths study.json was written with
    (which here still hold the original, finished runs)."""
    copy = tmp_path / "copy"
    shutil.copytree(quick_study, copy, ignore=shutil.ignore_patterns("checkpoints", "report"))
    shutil.rmtree(copy / "continued" / "versatile_blend" / "seed2")
    assert main(["report", str(copy)]) == 0
    data = json.loads((copy / "report" / "report.json").read_text())
    assert data["missing"] == ["continued/versatile_blend/seed2"]
    row = next(r for r in data["rows"] if r["variant"] == "versatile_blend")
    assert set(row["per_seed"]) == {"1"}


def test_a_run_name_leaving_the_study_directory_is_refused(quick_study, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(quick_study, copy, ignore=shutil.ignore_patterns("checkpoints", "report", "continued",
                                                                      "scratch*", "base"))
    record = json.loads((copy / "study.json").read_text())
    record["runs"][3]["name"] = "../../elsewhere/seed1"
    (copy / "study.json").write_text(json.dumps(record))
    assert main(["report", str(copy)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vffn-study: error: {copy / 'study.json'}: key 'runs[3].name' must be a path inside the study directory "
        "(got '../../elsewhere/seed1')"]


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
        assert main(["run", str(CONF), "--out", str(tmp_path / "out"), "--quick"]) == 1  # as every tool (README: Tool outputs)
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"vffn-study: error: {tmp_path / 'out'} is in use by PID {sleeper.pid} on this host "
                       f"({socket.gethostname()}, since 2024-01-01T00:00:00): another vffn-study run is working "
                       "on it; wait for it or stop it"]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vffn-study.lock"]
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("seeds, message", [
    ("3", "--seeds: 3 not among the study file's seeds [1, 2]"),
    ("1,x", "--seeds must be a comma-separated list of integers, got '1,x'"),
    ("", "--seeds must be a comma-separated list of integers, got ''"),
])
def test_bad_seeds_are_one_line_exit_2(tmp_path, capsys, seeds, message):
    assert main(["run", str(CONF), "--out", str(tmp_path / "out"), "--quick", "--seeds", seeds]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"vffn-study: error: {message}"]
    assert not (tmp_path / "out").exists()


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
    ("name: x\nseeds: [1]\nvariants: [dense, v_b]\nvariant_ffn: {v_b: versatil}\nbase_steps: 1\n"
     "continued_steps: 1\noverrides: []\n", "key 'variant_ffn.v_b' names 'versatil', which is not a conf/ffn group"),
    ("name: x\nseeds: [1]\nvariants: [dense]\nvariant_ffn: {kloop4: versatile}\nbase_steps: 1\n"
     "continued_steps: 1\noverrides: []\n", "key 'variant_ffn' has the name 'kloop4'"),
    ("name: x\nseeds: [1]\nvariants: [dense]\nvariant_ffn: {a/b: versatile}\nbase_steps: 1\n"
     "continued_steps: 1\noverrides: []\n", "key 'variant_ffn' has the name 'a/b'"),
    ("name: x\nseeds: [1]\nvariants: [dense]\nfrom_scratch: [dense, nope]\nbase_steps: 1\ncontinued_steps: 1\n"
     "overrides: []\n", "key 'from_scratch' names 'nope', which is not a conf/ffn group or a variant_ffn name"),
    ("name: x\nseeds: [1]\nvariants: [dense]\nfrom_scratch: dense\nbase_steps: 1\ncontinued_steps: 1\n"
     "overrides: []\n", "key 'from_scratch' must be a list of strings"),
])
def test_bad_study_file_is_one_line_exit_2(tmp_path, capsys, text, message):
    conf = tmp_path / "s.yaml"
    conf.write_text(text)
    assert main(["run", str(conf), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vffn-study: error: {conf}") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_report_shows_the_starting_loss_when_runs_evaluated_at_step_0(quick_study, tmp_path):
    """train.eval_at_start gives a step-0 record; the report then has a column for the converted model's loss
    and its difference to dense at step 0."""
    from vffn_pretrain.study.collect import read_study
    from vffn_pretrain.study.report import analyse, markdown

    meta, results = read_study(quick_study)
    for r in results:
        r.curve = [(s, v) for s, v in r.curve if s != 0]
    assert "loss at step 0" not in markdown(meta, analyse(results, meta))
    for r in results:
        r.curve = [(0, 7.0 if r.variant == "versatile_blend" else 6.0), *r.curve]
    lines = markdown(meta, analyse(results, meta)).splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| variant |"))
    header, rule = lines[i], lines[i + 1]
    rows = [line for line in lines if line.startswith(("| versatile_blend |", "| dense |"))][:2]
    assert "loss at step 0 (Δ vs dense)" in header and rule.startswith("|---|")
    assert header.count("|") == rule.count("|")
    column = header.split(" | ").index("loss at step 0 (Δ vs dense)")
    assert {row.split(" | ")[0]: row.split(" | ")[column] for row in rows} == {
        "| versatile_blend": "7.0000 (+1.0000)", "| dense": "6.0000 (—)"}
