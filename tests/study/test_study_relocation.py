"""A study directory moved or copied elsewhere (a study split over machines, a checkout moved) keeps its runs:
`vffn-study run` rewrites study.json for the new paths; anything that plans other runs or reads other data is
still refused. Plans only: nothing trains here (every run of the plan is made to look finished)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vffn_pretrain.study.cli import main

STUDY = """name: t
corpus: {name: c, dir: %s}
seeds: [1, 2]
variants: [dense]
base_steps: 4
continued_steps: 4
overrides: [train.seq_length=32]
"""
IDENTITY = {"corpus": "c", "tokenizer": {"path": "tokenizer.json", "vocab_size": 100, "sha256": "t1"},
            "splits": {"train": {"tokens": 10, "bin_sha256": "b1"}}}


def _corpus(path: Path, built_at: str = "2026-01-01T00:00:00", **changes) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({**IDENTITY, **changes, "built_at": built_at, "elapsed_s": 1.0}))
    return path


def _run(root: Path, out: str, capsys, *extra: str) -> tuple[int, str, str]:
    status = main(["run", str(root / "study.yaml"), "--out", str(root / out), *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def at(monkeypatch, capsys):
    """`at(root, corpus)`: root/study, the study of root/study.yaml (its corpus.dir `corpus`) run from `root`,
    with seed 1's runs finished (made to look so: a summary each) and recorded by `vffn-study run --seeds 1`."""
    from vffn_pretrain.study.config import load_study
    from vffn_pretrain.study.plan import make_plan

    def make(root: Path, corpus: str) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(root)
        (root / "study.yaml").write_text(STUDY % corpus)
        study = root / "study"
        for run in make_plan(load_study(root / "study.yaml"), study):
            if run.seed == 1:
                run.run_dir.mkdir(parents=True)
                (run.run_dir / "summary.json").write_text(json.dumps({"exit_code": 0, "steps": run.steps}))
        status, out, err = _run(root, "study", capsys, "--seeds", "1")
        assert status == 0 and "seeds 1 finished" in out, err
        return study
    return make


def _rerun(root: Path, capsys) -> tuple[int, str, str]:
    return _run(root, "study", capsys, "--seeds", "1")


def test_a_study_copied_to_another_checkout_with_a_relative_corpus_dir_goes_on(at, tmp_path, monkeypatch, capsys):
    """The shipped study files name a relative corpus.dir: another checkout has its own corpus there (rebuilt:
    another build time, the same data)."""
    _corpus(tmp_path / "a" / ".cache" / "corp")
    study = at(tmp_path / "a", ".cache/corp")
    _corpus(tmp_path / "b" / ".cache" / "corp", built_at="2027-02-02T00:00:00")
    shutil.copy(tmp_path / "a" / "study.yaml", tmp_path / "b" / "study.yaml")
    shutil.copytree(study, tmp_path / "b" / "study")
    monkeypatch.chdir(tmp_path / "b")
    status, out, err = _rerun(tmp_path / "b", capsys)
    assert status == 0, err
    assert (f"study: {tmp_path / 'b' / 'study' / 'study.json'} was written for {study} with the corpus "
            f"{tmp_path / 'a' / '.cache' / 'corp'}; it now names {tmp_path / 'b' / 'study'} with the corpus "
            f"{tmp_path / 'b' / '.cache' / 'corp'} (same runs)") in out
    runs = json.loads((tmp_path / "b" / "study" / "study.json").read_text())["runs"]
    assert runs[0]["run_dir"] == str(tmp_path / "b" / "study" / "base" / "seed1")
    assert f"data.tokenizer={tmp_path / 'b' / '.cache' / 'corp' / 'tokenizer.json'}" in runs[0]["overrides"]
    assert "seeds 1 finished" in out


def test_a_moved_study_whose_corpus_holds_other_data_is_refused(at, tmp_path, monkeypatch, capsys):
    """The corpus path starts with the study's path (`/x/study` and `/x/study_corpus`): moving both must not
    make a corpus with other data look like the same one."""
    _corpus(tmp_path / "p" / "study_corpus")
    study = at(tmp_path / "p", str(tmp_path / "p" / "study_corpus"))
    (tmp_path / "q").mkdir()
    _corpus(tmp_path / "q" / "study_corpus", splits={"train": {"tokens": 10, "bin_sha256": "OTHER"}})
    (tmp_path / "q" / "study.yaml").write_text(STUDY % (tmp_path / "q" / "study_corpus"))
    shutil.move(study, tmp_path / "q" / "study")
    monkeypatch.chdir(tmp_path / "q")
    before = (tmp_path / "q" / "study" / "study.json").read_text()
    status, _out, err = _rerun(tmp_path / "q", capsys)
    assert status == 2
    assert err.strip().splitlines() == [f"vffn-study: error: {tmp_path / 'q' / 'study'}: holds a study with other "
                                        "runs (study.yaml, quick=False); use another --out"]
    assert (tmp_path / "q" / "study" / "study.json").read_text() == before


def test_a_moved_study_keeping_its_corpus_whose_path_shares_the_prefix_goes_on(at, tmp_path, monkeypatch, capsys):
    """Only the study moves; the corpus `/p/study_corpus` stays and must not be read as `/q/study_corpus`."""
    _corpus(tmp_path / "p" / "study_corpus")
    study = at(tmp_path / "p", str(tmp_path / "p" / "study_corpus"))
    (tmp_path / "q").mkdir()
    shutil.copy(tmp_path / "p" / "study.yaml", tmp_path / "q" / "study.yaml")
    shutil.move(study, tmp_path / "q" / "study")
    monkeypatch.chdir(tmp_path / "q")
    status, out, err = _rerun(tmp_path / "q", capsys)
    assert status == 0, err
    assert f"was written for {study}; it now names {tmp_path / 'q' / 'study'} (same runs)" in out
    runs = json.loads((tmp_path / "q" / "study" / "study.json").read_text())["runs"]
    assert f"data.tokenizer={tmp_path / 'p' / 'study_corpus' / 'tokenizer.json'}" in runs[0]["overrides"]


def test_a_moved_study_with_another_override_is_refused(at, tmp_path, monkeypatch, capsys):
    _corpus(tmp_path / "a" / "corp")
    study = at(tmp_path / "a", "corp")
    (tmp_path / "b").mkdir()
    _corpus(tmp_path / "b" / "corp")
    (tmp_path / "b" / "study.yaml").write_text((STUDY % "corp").replace("seq_length=32", "seq_length=64"))
    shutil.copytree(study, tmp_path / "b" / "study")
    monkeypatch.chdir(tmp_path / "b")
    status, _out, err = _rerun(tmp_path / "b", capsys)
    assert status == 2 and "holds a study with other runs" in err
