"""Bad config keys and values stop at start-up with an error that names the key."""

from __future__ import annotations

import logging

import pytest

from tests.training import trainer_runs as cases
from vffn_pretrain.config.errors import ConfigError


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
        (["checkpoint.async_save=sometimes"], 1, "checkpoint.async_save"),
        (["logging.wandb.mode=cloud"], 1, "logging.wandb.mode"),
        (["data.split=abc"], 1, "data.split"),
        (["train.seq_length=8192"], 1, "train.seq_length"),
        (["parallel.collective_timeout_min=0"], 1, "parallel.collective_timeout_min"),
        (["parallel.init_timeout_s=soon"], 1, "parallel.init_timeout_s"),
        (["parallel.replan_threshold=-0.1"], 1, "parallel.replan_threshold"),
        (["parallel.replan_threshold=inf"], 1, "parallel.replan_threshold"),
        (["parallel.replan_threshold=soon"], 1, "parallel.replan_threshold"),
        # what megatron's schedules refuse (parallel/pipeline_rules.py), before any process group
        (["parallel.pp=2", "parallel.vpp=2", "train.global_batch_size=2"], 2, "train.global_batch_size"),  # m 1 < PP
        (["parallel.pp=4", "parallel.vpp=2", "model.num_layers=8", "train.global_batch_size=12"], 4,
         "train.global_batch_size"),  # 6 micro-batches: not a multiple of PP = 4
        (["parallel.pp=2", "parallel.pipeline_layout='Et|t|t|tL'", "train.global_batch_size=6"], 2,
         "train.global_batch_size"),  # VPP implied by the layout
        (["parallel.pp=2", "parallel.overlap_p2p_comm=true"], 2, "parallel.overlap_p2p_comm"),  # no interleaving
        (["parallel.overlap_p2p_comm=1"], 1, "parallel.overlap_p2p_comm"),
        (["parallel.overlap_p2p_comm=maybe"], 1, "parallel.overlap_p2p_comm"),
        (["parallel.pp=2", "parallel.pipeline_layout='Et(t|)*999999999L'"], 2, "parallel.pipeline_layout"),
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


# train.backend / precision / recompute_* moved to system.*; the old keys still work, with a warning.
MOVED = [("backend", "local"), ("precision", "bf16"), ("recompute_granularity", "full"),
         ("recompute_method", "block"), ("recompute_num_layers", 2)]


@pytest.mark.parametrize("key,value", MOVED)
def test_system_keys_under_their_new_and_old_names(key, value, caplog, monkeypatch):
    # An in-process Hydra run earlier in the session (logging.config with disable_existing_loggers) disables
    # loggers that already exist; the CLI configures logging before it loads the config, so it never is.
    moves = logging.getLogger("vffn_pretrain.config.moves")
    monkeypatch.setattr(moves, "disabled", False)
    monkeypatch.setattr(moves, "level", logging.NOTSET)
    new = cases.run_config([f"system.{key}={value}"])
    assert getattr(new.system, key) == value
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
    with caplog.at_level("WARNING", logger="vffn_pretrain"):
        old = cases.run_config([f"train.{key}={value}"])
    assert getattr(old.system, key) == value and old.system == new.system
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == [f"train.{key} is deprecated: use system.{key} (took system.{key}={value!r})"]
    # the saved config says it the new way
    assert old.raw["system"][key] == value and key not in old.raw["train"]


def test_old_and_new_system_keys_in_conflict_name_both():
    with pytest.raises(ConfigError) as info:
        cases.run_config(["train.backend=local", "system.backend=te"])
    assert info.value.key == "train.backend"
    assert "system.backend" in str(info.value) and "\n" not in str(info.value)


def test_old_and_new_system_keys_agreeing_are_fine():
    assert cases.run_config(["train.precision=fp32", "system.precision=fp32"]).system.precision == "fp32"


@pytest.mark.parametrize("overrides,key", [(["system.backend=cuda"], "system.backend"),
                                           (["train.backend=cuda"], "system.backend"),
                                           (["system.recompute_num_layers=0"], "system.recompute_num_layers")])
def test_bad_system_values_name_the_new_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        cases.run_config(overrides)
    assert info.value.key == key


def test_ffn_kloop_is_kloop4():
    assert cases.run_config(["ffn=kloop"]).raw["ffn"] == cases.run_config(["ffn=kloop4"]).raw["ffn"]
    assert cases.run_config(["ffn=kloop", "ffn.loops=6"]).ffn == cases.run_config(["ffn=kloop6"]).ffn


def test_ffn_loops_of_versatile_sets_k_of_kloop_layers_in_a_mixed_model():
    cfg = cases.run_config(["ffn=versatile", "ffn.layers='kloop*2,versatile*2'", "ffn.loops=3"])
    shapes = cfg.ffn.counting_shape(cfg.model.num_layers)
    assert [(s.kind, s.loops) for s in shapes][:2] == [("kloop", 3), ("kloop", 3)]


def test_overlap_p2p_comm_auto_follows_vpp():
    par = cases.run_config(["parallel.pp=2", "parallel.pipeline_layout='Et|t|t|tL'"], world_size=2).parallel
    assert par.p2p_overlap is True
    assert cases.run_config(["parallel.pp=2"], world_size=2).parallel.p2p_overlap is False
    forced = cases.run_config(["parallel.pp=2", "parallel.vpp=2", "parallel.overlap_p2p_comm=false"], world_size=2)
    assert forced.parallel.p2p_overlap is False
