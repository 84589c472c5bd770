"""vffn-eval end to end on the offline jargon_cloze task, and the task's data."""

from __future__ import annotations

import json
from pathlib import Path

from tests.export import export_runs as cases


def test_cloze_items_are_the_held_out_documents_rebuilt():
    from vffn_pretrain.evaluation import cloze

    shipped = [json.loads(line) for line in cloze.TASK_FILE.read_text().splitlines()]
    assert shipped == cloze.build_items()  # the shipped file is what the builder makes
    assert len(shipped) > 150
    held_out = cloze.held_out_documents()
    for item in shipped:
        assert len(item["choices"]) == 4 and 0 <= item["label"] < 4
        words = (item["context"] + " " + item["choices"][item["label"]]).split()
        assert any(" ".join(words) in " ".join(d.split()) for d in held_out)


def test_vffn_eval_runs_the_offline_task_end_to_end(rank_pools, tp2pp2_checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "eval.json"
    result = rank_pools(1).run(cases.run_cli, "vffn_pretrain.evaluation.cli",
                               ["--checkpoint", tp2pp2_checkpoints["versatile"], "--tasks", "jargon_cloze",
                                "--limit", "6", "--batch-size", "4", "--out", str(out)])[0]
    assert result["code"] == 0, result["stderr"][-2000:]
    results = json.loads(out.read_text())
    assert results["n-samples"]["jargon_cloze"]["effective"] == 6
    acc = results["results"]["jargon_cloze"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and acc * 6 == round(acc * 6)
    # the run that owns the checkpoint gets the scores in its summary.json, where vffn-scaling reads them
    summary = json.loads((Path(tp2pp2_checkpoints["versatile"]).parent / "summary.json").read_text())
    assert summary["downstream"]["jargon_cloze"]["acc"] == acc
