"""Faults while training: no run is lost, no failure is reported as success (issue classes 1, 2, 5, 7).

In-process runs on a one-rank pool where the fault can be injected from Python; a subprocess where a signal, a
kill or a second process is the point.
"""

from __future__ import annotations

import json
import shutil
import signal
import time

from omegaconf import OmegaConf

from tests.faults import trainer_cases
from tests.training import trainer_runs as cases


def _args(base_overrides, run_dir, *extra):
    return [*base_overrides, f"run_dir={run_dir}", *extra]


def test_no_validation_split_skips_evaluation_and_still_saves(rank_pools, base_overrides, tmp_path):
    out = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                            _args(base_overrides, tmp_path / "run", "train.max_steps=2", "data.split='100,0,0'",
                                  "train.eval_interval=1"))[0]
    assert out["exit_code"] == 0
    assert any("no validation data" in w and "data.split" in w for w in out["warnings"]), out["warnings"]
    assert (tmp_path / "run" / "checkpoints" / "step_0000002").is_dir()


def test_a_failing_evaluation_does_not_cost_the_checkpoint(rank_pools, base_overrides, tmp_path):
    out = rank_pools(1).run(trainer_cases.train_with_failing_eval,
                            _args(base_overrides, tmp_path / "run", "train.max_steps=4", "train.eval_interval=2",
                                  "checkpoint.interval=2"))[0]
    assert out["raised"] == "evaluation exploded"
    assert out["checkpoints"] == ["step_0000002"]


def test_disk_full_during_save_cleans_up_and_reports(rank_pools, base_overrides, tmp_path):
    run = tmp_path / "run"
    out = rank_pools(1).run(trainer_cases.train_with_full_disk,
                            _args(base_overrides, run, "train.max_steps=6", "checkpoint.interval=2"), 4)[0]
    assert out["exit_code"] == 1
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_0000002"]  # no .tmp-step_0000004 left
    assert (ckpts / "latest").read_text().strip() == "step_0000002"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exit_code"] == 1 and summary["steps"] == 4
    assert summary["checkpoint"].endswith("step_0000002")


def test_resume_with_another_model_names_the_keys(rank_pools, base_overrides, tmp_path):
    run = tmp_path / "run"
    first = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                              _args(base_overrides, run, "train.max_steps=2"))[0]
    assert first["exit_code"] == 0
    changed = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                                _args(base_overrides, run, "train.max_steps=4", "model.hidden_size=128"))[0]
    assert "model.hidden_size: 64 -> 128" in changed["error"], changed
    assert "model.num_layers" not in changed["error"]
    # config.yaml still describes the run that owns the checkpoints.
    assert OmegaConf.load(run / "config.yaml").model.hidden_size == 64


def test_resume_warns_about_a_garbage_latest_marker_and_a_changed_max_steps(rank_pools, base_overrides, tmp_path):
    run = tmp_path / "run"
    first = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                              _args(base_overrides, run, "train.max_steps=6", "train.exit_interval=2",
                                    "ffn=versatile"))[0]
    assert first["exit_code"] == 0
    (run / "checkpoints" / "latest").write_text("step_12345xx\n")
    second = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                               _args(base_overrides, run, "train.max_steps=12", "train.exit_interval=1",
                                     "ffn=versatile"))[0]
    assert second["exit_code"] == 0
    warnings = "\n".join(second["warnings"])
    assert "step_12345xx" in warnings and "not a complete checkpoint" in warnings
    line = next(w for w in second["warnings"] if "train.max_steps changed from 6 to 12" in w)
    assert "LR now" in line and "tau now" in line and "train.exit_interval" in line and "wsd" in line


def _wait_for_steps(proc, metrics, n, timeout=240):
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().count("\n") >= n):
        assert proc.poll() is None, proc.output[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_first_sigint_saves_and_exits_3(base_overrides, tmp_path):
    run = tmp_path / "run"
    proc = cases.train_subprocess(_args(base_overrides, run, "train.max_steps=500", "checkpoint.interval=1000"),
                                  wait=False)
    _wait_for_steps(proc, run / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGINT)
    done = proc.wait(timeout=120)
    assert done.returncode == 3, done.stdout[-3000:]
    assert "Traceback" not in done.stdout and "KeyboardInterrupt" not in done.stdout
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert "SIGINT received: saved" in done.stdout and latest in done.stdout


def test_second_sigint_aborts_at_once(base_overrides, tmp_path):
    run = tmp_path / "run"
    proc = cases.train_subprocess(_args(base_overrides, run, "train.max_steps=500", "checkpoint.interval=1000"),
                                  wait=False)
    _wait_for_steps(proc, run / "metrics.jsonl", 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    done = proc.wait(timeout=30)
    assert done.returncode == 130, done.stdout[-3000:]
    assert "second SIGINT: aborting" in done.stdout


def test_generate_falls_back_past_a_broken_newest_checkpoint(rank_pools, base_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    out = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                            _args(base_overrides, run, "train.max_steps=4", "checkpoint.interval=2"))[0]
    assert out["exit_code"] == 0
    newest = run / "checkpoints" / "step_0000004"
    for f in newest.glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:100])  # truncated
    capsys.readouterr()
    text = cases.generate(["--checkpoint", str(run / "checkpoints"), "--max-new-tokens", "3", "--prompt", "1 2"])
    assert text.startswith("1 2")
    err = capsys.readouterr().err
    assert f"checkpoint {newest} failed to load" in err and "trying the previous one" in err


def _train_steps(metrics):
    """The step of each training record in metrics.jsonl, in file order (evaluation records aside)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


def test_metrics_hold_each_step_once_after_a_resume_past_the_checkpoint(rank_pools, base_overrides, tmp_path):
    # A run that saved at step 3, logged steps 4 and 5 and died before its next save: made by training to step 5
    # and removing the step-5 checkpoint. The resumed run repeats steps 4 and 5; metrics.jsonl must hold them once.
    run = tmp_path / "run"
    first = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                              _args(base_overrides, run, "train.max_steps=5", "checkpoint.interval=3"))[0]
    assert first["exit_code"] == 0
    ckpts = run / "checkpoints"
    shutil.rmtree(ckpts / "step_0000005")
    (ckpts / "latest").write_text("step_0000003\n")
    assert _train_steps(run / "metrics.jsonl") == [1, 2, 3, 4, 5]
    second = rank_pools(1).run(trainer_cases.train_collecting_warnings,
                               _args(base_overrides, run, "train.max_steps=6", "checkpoint.interval=3"))[0]
    assert second["exit_code"] == 0
    assert _train_steps(run / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]
