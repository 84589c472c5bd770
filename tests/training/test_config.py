"""Bad config keys and values stop at start-up with an error that names the key."""

from __future__ import annotations

import pytest

from tests.training import trainer_runs as cases
from vffn_pretrain.config_errors import ConfigError


@pytest.mark.parametrize(
    "overrides,world,key",
    [
        (["parallel.tp=3"], 4, "parallel.tp"),  # world not divisible by TP x PP
        (["parallel.tp=2", "parallel.pp=3"], 4, "parallel.tp"),
        (["model.num_attention_heads=3", "model.hidden_size=96", "parallel.tp=2"], 2, "model.num_attention_heads"),
        (["parallel.pp=2", "model.num_layers=3"], 2, "model.num_layers"),  # layers not divisible by PP
        (["parallel.pp=2", "parallel.vpp=2", "model.num_layers=6"], 2, "model.num_layers"),
        (["parallel.pp=2", "parallel.pipeline_layout='E|ttX'"], 2, "parallel.pipeline_layout"),
        (["parallel.pp=2", "parallel.pipeline_layout='Ett|ttL'", "parallel.vpp=2"], 2, "parallel.vpp"),
        (["train.global_batch_size=10", "train.micro_batch_size=4"], 1, "train.global_batch_size"),
        (["train.global_batch_size=8", "train.micro_batch_size=4"], 4, "train.global_batch_size"),
        (["parallel.sp=true"], 1, "parallel.sp"),
        (["train.lr=-1"], 1, "train.lr"),
        (["train.lr=fast"], 1, "train.lr"),
        (["train.lr_schedule=linear"], 1, "train.lr_schedule"),
        (["+train.learning_rate=1e-3"], 1, "train.learning_rate"),
        (["+model.dropout=0.1"], 1, "model.dropout"),
        (["ffn.top_k=9"], 1, "ffn.top_k"),
        (["ffn.max_loops=0"], 1, "ffn.max_loops"),
        (["ffn.tau_min=6.0"], 1, "ffn.tau_min"),
        (["ffn.num_experts=7"], 1, "ffn.num_experts"),
        (["checkpoint.keep=0"], 1, "checkpoint.keep"),
        (["logging.wandb.mode=cloud"], 1, "logging.wandb.mode"),
        (["data.split=abc"], 1, "data.split"),
        (["train.seq_length=8192"], 1, "train.seq_length"),
        (["parallel.collective_timeout_min=0"], 1, "parallel.collective_timeout_min"),
        (["parallel.init_timeout_s=soon"], 1, "parallel.init_timeout_s"),
    ],
)
def test_bad_config_names_the_key(overrides, world, key):
    with pytest.raises(ConfigError) as info:
        cases.run_config(overrides, world_size=world)
    assert info.value.key == key, str(info.value)
    assert f"`{key}`" in str(info.value)


def test_default_config_is_valid_and_dp_is_what_is_left():
    cfg = cases.run_config(["parallel.tp=2", "parallel.pp=2", "train.global_batch_size=16"], world_size=8)
    assert cfg.dp_size == 2
    assert cfg.ffn.kind == "versatile" and cfg.model.name == "tiny"


def test_layout_string_sets_the_virtual_stages():
    cfg = cases.run_config(["parallel.pp=2", "parallel.pipeline_layout='Et|t|t|tL'"], world_size=2)
    assert cfg.parallel.vpp == 2


def test_cli_reports_bad_config_without_starting(tmp_path):
    out = cases.train_subprocess(["parallel.tp=3", f"run_dir={tmp_path / 'run'}"], timeout=120)
    assert out.returncode == 2
    assert "config key `parallel.tp`" in out.stdout
    assert not (tmp_path / "run").exists()  # nothing written before the config was valid
