"""A sweep for real: the ladder tool plans it, Hydra multirun runs it on the local (basic) launcher, and
vffn-scaling reads its directory."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from tests.launch import launcher_runs as helpers
from tests.training import trainer_runs as cases

VARIANTS = ("dense", "versatile")


def _ladder_yaml(data: str, cache) -> str:
    # One tiny size, two FFN variants: 2 runs of a few steps each (tokens_per_param is tiny on purpose).
    overrides = [f"data.paths={data}", f"data.cache_dir={cache}", f"data.tokenizer=null:{cases.VOCAB}",
                 "train.micro_batch_size=4", "train.eval_iters=1", "logging.wandb.enabled=false",
                 "logging.progress_bar=false", "logging.interval=1"]
    return f"""
rules:
  tokens_per_param: 0.004
  batch: {{min_sequences: 8, max_sequences: 8, min_steps: 1}}
variants: [{", ".join(VARIANTS)}]
ladders:
  t:
    base_model: tiny
    seq_length: 32
    vocab_size: {cases.VOCAB}
    overrides: [{", ".join(overrides)}]
    sizes:
      - {{name: t64, num_layers: 2, hidden_size: 64, num_attention_heads: 4}}
"""


def test_ladder_multirun_on_the_local_launcher_then_vffn_scaling(launch_data, tmp_path):
    config = tmp_path / "ladder.yaml"
    config.write_text(_ladder_yaml(launch_data, tmp_path / "cache"))
    plan = subprocess.run([sys.executable, "-m", "vffn_pretrain.scaling.ladder", "--config", str(config),
                           "--ladder", "t", "--format", "multirun", "--launcher", "basic"],
                          capture_output=True, text=True, timeout=60, env=helpers.run_env())
    assert plan.returncode == 0, plan.stderr
    commands = plan.stdout.strip().splitlines()
    assert len(commands) == 1  # one multirun per size, over the variants
    argv = shlex.split(commands[0])
    assert argv[:4] == ["python", "-m", "vffn_pretrain.train", "-m"] and "hydra/launcher=basic" in argv
    steps = int(next(a for a in argv if a.startswith("train.max_steps=")).split("=")[1])
    assert 2 <= steps <= 10

    # The planned command as printed, run from a scratch directory (the sweep dir is relative to it).
    sweep = helpers.Proc([sys.executable, *argv[1:]], helpers.run_env(), tmp_path / "sweep.log", cwd=tmp_path)
    done = sweep.wait(timeout=240)
    assert done.returncode == 0, helpers.tail(done.output)
    root = tmp_path / "multirun" / "ladder-t"
    for variant in VARIANTS:
        summary = helpers.summary(root / "t64" / variant)
        assert summary["variant"] == variant and summary["model"] == "t64"
        assert summary["exit_code"] == 0 and summary["steps"] == steps
        assert summary["tokens"] == steps * 8 * 32
        assert summary["final_val_loss"] is not None
        assert (root / "t64" / variant / "checkpoints" / f"step_{steps:07d}").is_dir()

    scaling = subprocess.run([sys.executable, "-m", "vffn_pretrain.scaling.cli", str(root), "--json"],
                             capture_output=True, text=True, timeout=120, env=helpers.run_env())
    assert scaling.returncode == 0, scaling.stderr
    result = json.loads(scaling.stdout)
    assert result["n_runs"] == 2 and sorted(result["variants"]) == sorted(VARIANTS)
    for variant in VARIANTS:
        v = result["variants"][variant]
        assert v["n_runs"] == 1 and v["models"] == ["t64"]
        # one size per variant: nothing to fit, and the report says why instead of failing
        assert "needs >= 3 distinct x values" in v["loss_vs_compute"]["skipped"]
    assert "no variant has enough runs for a fit" in result["equal_compute"]["text"]
    for name in ("loss_vs_compute.png", "loss_vs_params.png", "scaling_fits.json"):
        assert (root / "scaling" / name).stat().st_size > 0


def test_cpu_quick_ladder_plans_its_own_variants_as_valid_runs(capsys):
    """The CPU preset (timed in the report of issue 6) names its variants; --variants still overrides them."""
    from vffn_pretrain.scaling.ladder import main

    assert main(["--ladder", "cpu_quick", "--format", "overrides"]) == 0
    runs = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(runs) == 5 * 2
    assert {a for r in runs for a in r if a.startswith("ffn=")} == {"ffn=dense", "ffn=versatile"}
    for overrides in (runs[0], runs[-1]):  # smallest and largest size compose into valid trainer configs
        cfg = cases.run_config(overrides)
        assert cfg.train.max_steps >= 90 and cfg.model.vocab_size == 8192
    assert main(["--ladder", "cpu_quick", "--variants", "moe", "--format", "overrides"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all("ffn=moe" in shlex.split(line) for line in lines)


def test_ctrl_c_stops_a_local_sweep_as_a_whole(tiny, tmp_path):
    """Ctrl-C on a Hydra multirun (the basic launcher, as the ladder plans it; issue 23, class 5): the running
    job saves and exits 3, and the sweep stops there: no next job starts, no process is left."""
    import os
    import signal

    from tests.faults.processes import wait_until_gone

    sweep_dir = tmp_path / "multirun"
    cmd = [sys.executable, "-m", "vffn_pretrain.train", "-m", "ffn=dense,versatile", *tiny, "train.max_steps=400",
           "hydra/launcher=basic", f"hydra.sweep.dir={sweep_dir}", "run_dir=${hydra:sweep.dir}/${hydra:job.num}"]
    sweep = helpers.Proc(cmd, helpers.run_env(), tmp_path / "sweep.log", cwd=tmp_path)
    metrics = sweep_dir / "0" / "metrics.jsonl"
    helpers.wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, timeout=180,
                     what="two logged steps of the first job", proc=sweep)
    os.killpg(sweep.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    done = sweep.wait(timeout=120)
    assert done.returncode == 3, helpers.tail(done.output)
    assert not wait_until_gone(sweep.proc.pid, 30)
    assert helpers.summary(sweep_dir / "0")["exit_code"] == 3  # saved: the same command resumes it
    assert not (sweep_dir / "1").exists()  # the second job never started
