"""The real trainer with and without token-sparse recursion: the same losses for 5 steps (fp32, 1e-6 relative),
and metrics.jsonl shows the share of loop work that kept an autograd graph."""

from __future__ import annotations

import json

import numpy as np

from tests.training import trainer_runs as cases

STEPS = 5


def _overrides(base_overrides, tmp_path, name, token_sparse):
    return [*base_overrides, f"run_dir={tmp_path / name}", f"train.max_steps={STEPS}", "checkpoint.interval=1000",
            "ffn=versatile", f"ffn.token_sparse_recursion={str(token_sparse).lower()}", "logging.stats_interval=1"]


def _graph_fractions(run_dir) -> list[float]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for layer in (record.get("layers") or {}).values():
            if layer.get("graph_work_fraction") is not None:
                out.append(layer["graph_work_fraction"])
    return out


def test_same_losses_with_and_without_token_sparse_recursion(rank_pools, base_overrides, tmp_path):
    pool = rank_pools(1)
    dense = pool.run(cases.train, _overrides(base_overrides, tmp_path, "all_token", False))[0]
    sparse = pool.run(cases.train, _overrides(base_overrides, tmp_path, "sparse", True))[0]
    steps = list(range(1, STEPS + 1))
    np.testing.assert_allclose([sparse["losses"][s] for s in steps], [dense["losses"][s] for s in steps],
                               rtol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    overall = [r["graph_work_fraction"] for r in records if r.get("graph_work_fraction") is not None]
    assert len(overall) == STEPS and all(0.25 <= f < 1.0 for f in overall), overall
    saved = _graph_fractions(tmp_path / "sparse")
    assert saved and all(0.25 <= f < 1.0 for f in saved), saved
    assert set(_graph_fractions(tmp_path / "all_token")) == {1.0}
