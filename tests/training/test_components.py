"""The trainer's components on their own: when to save, when to evaluate, when a run has diverged."""

from __future__ import annotations

from pathlib import Path

from vffn_pretrain.training.checkpointing import CheckpointManager
from vffn_pretrain.training.config import TrainConfig
from vffn_pretrain.training.divergence import DivergenceGuard
from vffn_pretrain.training.evaluator import Evaluator
from vffn_pretrain.training.step import StepResult


def test_checkpoint_cadence_every_interval_and_at_the_end(tmp_path):
    ckpt = CheckpointManager(tmp_path, interval=3)
    assert [s for s in range(1, 8) if ckpt.should_save(s, max_steps=7)] == [3, 6, 7]
    assert not ckpt.has_saved(6)
    ckpt.last = tmp_path / "step_0000006"
    assert ckpt.has_saved(6) and not ckpt.has_saved(7)


def test_evaluation_cadence_and_when_it_is_off():
    train = TrainConfig(eval_interval=2, eval_iters=1)
    assert [s for s in range(1, 6) if Evaluator(train, has_valid_data=True).should_evaluate(s, 5)] == [2, 4, 5]
    assert not any(Evaluator(train, has_valid_data=False).should_evaluate(s, 5) for s in range(1, 6))
    no_iters = TrainConfig(eval_interval=2, eval_iters=0)
    assert not any(Evaluator(no_iters, has_valid_data=True).should_evaluate(s, 5) for s in range(1, 6))


def _result(skipped: bool) -> StepResult:
    return StepResult(float("nan") if skipped else 1.0, None, not skipped, 8, skipped=skipped)


def test_divergence_guard_stops_after_max_skipped_steps_in_a_row():
    said: list[str] = []
    guard = DivergenceGuard(max_skipped_steps=2, say=said.append)
    outcomes = [False, True, False, True, True]  # skipped?
    stops = [guard.should_stop(step, _result(s), Path("ckpt/step_0000001")) for step, s in enumerate(outcomes, 1)]
    assert stops == [False, False, False, False, True]
    assert guard.skipped_total == 3
    assert said[:3] == ["step 2: loss nan or gradient not finite; skipped (1 in a row)",
                        "step 4: loss nan or gradient not finite; skipped (1 in a row)",
                        "step 5: loss nan or gradient not finite; skipped (2 in a row)"]
    assert said[3].startswith("stopping: 2 consecutive steps had NaN/Inf") and "ckpt/step_0000001" in said[3]


def test_pruning_takes_old_checkpoints_out_at_once_and_deletes_them_in_the_background(tmp_path, monkeypatch):
    import shutil
    import threading

    from vffn_pretrain.training import checkpointing

    for step in (2, 4, 6):
        (tmp_path / f"step_{step:07d}").mkdir()
        (tmp_path / f"step_{step:07d}" / "shard.distcp").write_bytes(b"x" * 1000)
    release, deleting = threading.Event(), []
    real_rmtree = shutil.rmtree

    def slow_rmtree(path, *args, **kwargs):  # a large checkpoint's files take seconds to delete
        if Path(path).name.startswith(checkpointing.PRUNED_PREFIX) and Path(path).exists():
            deleting.append(Path(path).name)
            release.wait(10)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.shutil, "rmtree", slow_rmtree)
    ckpt = CheckpointManager(tmp_path, keep=1)
    ckpt._prune()  # returns while the files of step 2 and 4 are still being deleted
    assert [p.name for p in ckpt.complete_checkpoints()] == ["step_0000006"]
    assert ckpt._deletes and ckpt._deletes[0].is_alive()
    release.set()
    ckpt.finish_deletes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000006"]
    assert sorted(deleting) == [".pruned-step_0000002", ".pruned-step_0000004"]


def test_a_prune_cut_short_is_finished_by_the_next_run_and_not_called_a_partial_save(tmp_path):
    (tmp_path / "step_0000006").mkdir()
    (tmp_path / ".pruned-step_0000004").mkdir()  # kill -9 while its files were being deleted
    (tmp_path / ".tmp-step_0000008").mkdir()  # and a save cut short
    partial = CheckpointManager(tmp_path, keep=1).sweep_partial_saves()
    assert [p.name for p in partial] == [".tmp-step_0000008"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000006"]
