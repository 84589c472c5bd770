"""Runs never get lost: exact resume, kill -9, a kill during a save, SIGTERM, resharding."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np

from tests.training import trainer_runs as cases


def _args(base_overrides, run_dir, *extra):
    return [*base_overrides, f"run_dir={run_dir}", *extra]


def test_resume_is_bitwise_equal_to_uninterrupted(base_overrides, tmp_path):
    straight = cases.train_subprocess(_args(base_overrides, tmp_path / "a", "train.max_steps=6"))
    assert straight.returncode == 0, straight.stdout[-3000:]
    wandb = ["logging.wandb.enabled=true", "logging.wandb.mode=offline"]
    first = cases.train_subprocess(_args(base_overrides, tmp_path / "b", "train.max_steps=6", "train.exit_interval=3",
                                         *wandb))
    assert first.returncode == 0, first.stdout[-3000:]
    assert (tmp_path / "b" / "checkpoints" / "step_0000003").is_dir()
    second = cases.train_subprocess(_args(base_overrides, tmp_path / "b", "train.max_steps=6", *wandb))
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resumed from step 3" in second.stdout
    a, b = cases.read_losses(tmp_path / "a"), cases.read_losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 7))
    assert [b[s] for s in range(1, 7)] == [a[s] for s in range(1, 7)]  # bitwise, data order included
    # The resumed process continued the same wandb run (its id is kept in the checkpoint).
    runs = sorted((tmp_path / "b" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1, runs


def test_kill_9_then_same_command_resumes(base_overrides, tmp_path):
    args = _args(base_overrides, tmp_path / "run", "train.max_steps=40", "checkpoint.interval=2")
    proc = cases.train_subprocess(args, wait=False)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpts / "step_0000004").is_dir():
        assert proc.poll() is None, proc.output[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = cases.train_subprocess(args)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    start = int(resumed.stdout.split("resumed from step ")[1].split()[0])
    assert start >= 4
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 40


def test_kill_during_save_falls_back_to_previous_checkpoint(base_overrides, tmp_path):
    args = _args(base_overrides, tmp_path / "run", "train.max_steps=6", "checkpoint.interval=2")
    crashed = cases.train_subprocess(args, env={"VFFN_FAULT_KILL_IN_SAVE": "4"})
    assert crashed.returncode != 0
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / ".tmp-step_0000004").is_dir()  # the half-written save
    assert (ckpts / "latest").read_text().strip() == "step_0000002"
    resumed = cases.train_subprocess(args)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resumed from step 2" in resumed.stdout


def test_corrupted_checkpoint_is_reported_and_previous_used(base_overrides, tmp_path):
    args = _args(base_overrides, tmp_path / "run", "train.max_steps=4", "checkpoint.interval=2")
    assert cases.train_subprocess(args).returncode == 0
    newest = tmp_path / "run" / "checkpoints" / "step_0000004"
    for f in newest.glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:100])  # truncated
    resumed = cases.train_subprocess([*args[:-2], "train.max_steps=6", "checkpoint.interval=2"])
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "step_0000004 failed to load" in resumed.stdout + resumed.stderr
    assert "resumed from step 2" in resumed.stdout


def test_sigterm_saves_and_exits_with_requeue_code(base_overrides, tmp_path):
    args = _args(base_overrides, tmp_path / "run", "train.max_steps=500", "checkpoint.interval=1000")
    proc = cases.train_subprocess(args, wait=False)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    finished = proc.wait(timeout=120)
    out = finished.stdout
    assert finished.returncode == 3, out[-3000:]
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert "SIGTERM received" in out and latest in out


def test_reshard_tp2_checkpoint_continues_at_tp1(rank_pools, base_overrides, tmp_path):
    straight = rank_pools(1).run(cases.train, _args(base_overrides, tmp_path / "ref", "train.max_steps=4"))[0]
    first = rank_pools(2).run(cases.train, _args(base_overrides, tmp_path / "run", "train.max_steps=4",
                                                 "train.exit_interval=3", "parallel.tp=2"))[0]
    assert first["summary"]["steps"] == 3
    second = rank_pools(1).run(cases.train, _args(base_overrides, tmp_path / "run", "train.max_steps=4"))[0]
    np.testing.assert_allclose(second["losses"][4], straight["losses"][4], rtol=1e-5)


def test_nan_steps_are_skipped_then_the_run_stops(base_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("VFFN_FAULT_NAN_STEPS", "2")
    ok = cases.train_subprocess(_args(base_overrides, tmp_path / "a", "train.max_steps=4"),
                                env={"VFFN_FAULT_NAN_STEPS": "2"})
    assert ok.returncode == 0, ok.stdout[-3000:]
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "skipped_steps" in r] == [0, 1, 1, 1]
    bad = cases.train_subprocess(_args(base_overrides, tmp_path / "b", "train.max_steps=10", "checkpoint.interval=1",
                                       "train.max_skipped_steps=2"), env={"VFFN_FAULT_NAN_STEPS": "3,4,5"})
    assert bad.returncode == 2
    assert "2 consecutive steps had NaN/Inf" in bad.stdout + bad.stderr
    assert str(Path(tmp_path / "b" / "checkpoints" / "step_0000002")) in bad.stdout + bad.stderr
