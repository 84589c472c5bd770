"""parallel/launcher_env.py: the world size the launcher gives, and a bad one as one line from the trainer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vffn_pretrain.parallel.launcher_env import launcher_world_size


def test_world_size_from_torchrun_then_the_srun_step(monkeypatch):
    for key in ("WORLD_SIZE", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    assert launcher_world_size() == 1
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert launcher_world_size() == 4
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launcher_world_size() == 8


@pytest.mark.parametrize("value", ["abc", "", "0", "-2", "inf", "2.5"])
def test_a_bad_world_size_is_one_line_and_exit_2(tmp_path, value):
    env = {**os.environ, "WORLD_SIZE": value, "RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "vffn_pretrain.train", f"run_dir={tmp_path / 'run'}"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"vffn-pretrain: bad environment: environment variable WORLD_SIZE={value!r}: "
                                   "expected a positive integer (set by the launcher)")
    assert not (tmp_path / "run").exists()
