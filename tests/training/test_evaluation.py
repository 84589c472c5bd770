"""What an evaluation measures: the same validation samples whatever the run's length, and (train.eval_train_mode)
the loss with loop counts sampled as in training, without changing the training run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.training import trainer_runs as cases


def _evals(run_dir) -> dict[int, dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "val_loss" in r}


def test_runs_of_different_lengths_evaluate_the_same_samples(rank_pools, base_overrides, tmp_path):
    """Megatron shuffles a split by the epochs a request spans: the valid request must not grow with max_steps,
    or a long and a short run (the study's from-scratch arm) would be scored on different samples."""
    common = [*base_overrides, "ffn=dense", "train.eval_at_start=true", "train.eval_interval=1",
              "train.exit_interval=1"]
    rank_pools(1).run(cases.train, [*common, f"run_dir={tmp_path / 'short'}", "train.max_steps=2"])
    rank_pools(1).run(cases.train, [*common, f"run_dir={tmp_path / 'long'}", "train.max_steps=4000"])
    assert _evals(tmp_path / "short")[0]["val_loss"] == _evals(tmp_path / "long")[0]["val_loss"]


def test_train_mode_evaluation_samples_loops_and_leaves_training_alone(rank_pools, base_overrides, tmp_path):
    common = [*base_overrides, "train.max_steps=2", "train.eval_interval=1"]
    plain = rank_pools(1).run(cases.train, [*common, f"run_dir={tmp_path / 'plain'}", "ffn=versatile"])[0]
    both = rank_pools(1).run(cases.train, [*common, f"run_dir={tmp_path / 'both'}", "ffn=versatile",
                                           "train.eval_train_mode=true"])[0]
    assert both["losses"] == plain["losses"]  # the extra pass draws nothing training would draw
    evals, plain_evals = _evals(tmp_path / "both"), _evals(tmp_path / "plain")
    assert [e["val_loss"] for e in evals.values()] == [e["val_loss"] for e in plain_evals.values()]
    # Sampled loop counts (Gumbel noise) instead of the argmax: another number, and a reproducible one.
    assert all(e["val_loss_train_mode"] != e["val_loss"] for e in evals.values())
    rank_pools(1).run(cases.train, [*common, f"run_dir={tmp_path / 'again'}", "ffn=versatile",
                                    "train.eval_train_mode=true"])
    assert [e["val_loss_train_mode"] for e in _evals(tmp_path / "again").values()] == \
        [e["val_loss_train_mode"] for e in evals.values()]
    assert both["summary"]["final_val_loss_train_mode"] == evals[2]["val_loss_train_mode"]
    dense = rank_pools(1).run(cases.train, [*common, f"run_dir={tmp_path / 'dense'}", "ffn=dense",
                                            "train.eval_train_mode=true"])[0]
    assert all(e["val_loss_train_mode"] == e["val_loss"] for e in _evals(tmp_path / "dense").values())
    assert dense["summary"]["final_val_loss_train_mode"] == dense["summary"]["final_val_loss"]


def test_both_modes_score_the_same_batches(rank_pools, base_overrides, tmp_path):
    """With one loop at most there is nothing to sample: train mode computes what eval mode does, so the two
    losses agree only when both passes read the same validation batches."""
    rank_pools(1).run(cases.train, [*base_overrides, "train.max_steps=2", "train.eval_interval=1",
                                    "train.eval_iters=2", "train.eval_train_mode=true", f"run_dir={tmp_path / 'r'}",
                                    "ffn=versatile", "ffn.max_loops=1"])
    for e in _evals(tmp_path / "r").values():
        assert abs(e["val_loss_train_mode"] - e["val_loss"]) < 1e-5, e

