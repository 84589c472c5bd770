"""Every numeric config key is range-checked, by the one validation the trainer and `vffn-info` share (issue
class 6): a value out of its range, of the wrong type, NaN or infinite stops both with an error naming that key
(not a neighbour).

The cases are made from each field's declared bounds (`config_fields.setting`), so a key added later is covered
by itself; the hand-written table below pins the bounds themselves against what the maths needs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing

import pytest
from omegaconf import OmegaConf

from tests.training import trainer_runs as cases
from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import bounds_of
from vffn_pretrain.config.run import load_run_config
from vffn_pretrain.config.system import SystemConfig
from vffn_pretrain.data.config import DataConfig
from vffn_pretrain.info import info_from_config
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.training.config import CheckpointConfig, LoggingConfig, TrainConfig

GROUPS = {"model": ModelConfig, "ffn": FFNConfig, "parallel": ParallelConfig, "system": SystemConfig,
          "data": DataConfig, "train": TrainConfig, "checkpoint": CheckpointConfig, "logging": LoggingConfig}


def _numeric_fields():
    for group, cls in GROUPS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = typing.get_args(hints[f.name]) or (hints[f.name],)
            if any(a in (int, float) for a in args):
                yield group, f, hints[f.name]


NUMERIC = list(_numeric_fields())


def test_every_numeric_key_declares_its_range():
    missing = [f"{group}.{f.name}" for group, f, _ in NUMERIC if bounds_of(f) is None]
    assert not missing, f"numeric config keys without a declared range: {missing}"
    assert len(NUMERIC) >= 40  # the walk found the groups' fields


def _bad_values(f, hint) -> list:
    """Values just outside the declared bounds, and values of the wrong kind."""
    ge, gt, le, lt = bounds_of(f) or (None,) * 4  # (a key without bounds fails the test above)
    is_int = int in (typing.get_args(hint) or (hint,)) and float not in (typing.get_args(hint) or (hint,))
    step = 1 if is_int else 1e-3
    out = [v for v in (None if ge is None else ge - step, gt, None if le is None else le + step, lt) if v is not None]
    out += ["many", True, [1]]
    out += [1.5] if is_int else [math.nan, math.inf, -math.inf]
    return out


BAD = [(group, f.name, v) for group, f, hint in NUMERIC for v in _bad_values(f, hint)]


@pytest.fixture(scope="module")
def good_raw() -> dict:
    """A valid resolved config (the tiny trainer run's), as plain containers."""
    cfg = cases.compose([*cases.BASE, "data.paths=/nowhere/ds"])
    raw = OmegaConf.to_container(cfg, resolve=True)
    raw.pop("hydra", None)
    return raw


@pytest.mark.parametrize("group, name, value", BAD, ids=[f"{g}.{n}={v!r}" for g, n, v in BAD])
def test_trainer_and_vffn_info_name_the_key_out_of_range(group, name, value, good_raw, tmp_path):
    raw = copy.deepcopy(good_raw)
    raw["run_dir"] = str(tmp_path / "run")
    raw[group][name] = value
    key = f"{group}.{name}"
    with pytest.raises(ConfigError) as trainer:
        load_run_config(raw, world_size=1)
    assert trainer.value.key == key, str(trainer.value)
    with pytest.raises(ConfigError) as info:
        info_from_config(raw)
    assert info.value.key == key, str(info.value)
    assert not (tmp_path / "run").exists()


# The bounds themselves: what each key must be for the maths to make sense.
HOSTILE = [
    ("train.beta1", 1.0), ("train.beta2", -0.1), ("train.eps", 0.0), ("train.weight_decay", -0.1),
    ("train.clip_grad", -1.0), ("train.min_lr_ratio", 1.5), ("train.warmup_ratio", 1.0),
    ("train.wsd_decay_ratio", 0.0), ("train.seed", -1), ("train.seed", 2**32), ("data.seed", 2**32),
    ("train.exit_interval", 0), ("train.max_steps", 10**20), ("train.max_steps", 3.0), ("model.init_std", 0.0),
    ("model.norm_epsilon", 0.0), ("model.rotary_base", 0), ("model.max_position_embeddings", 0),
    ("model.make_vocab_size_divisible_by", 0), ("ffn.max_loops", 65), ("ffn.loops", 0), ("ffn.tau_decay", 1.5),
    ("ffn.tau0", 0.0), ("ffn.balance_coeff", -1e-5), ("ffn.num_experts", None), ("parallel.plan_memory_gib", 0),
    ("parallel.plan_memory_gib", "lots"), ("parallel.collective_timeout_min", 1e30),
    ("system.recompute_num_layers", 0), ("data.num_workers", -1), ("data.split", "0,1,0"), ("data.split", "0"),
    ("checkpoint.interval", 0), ("logging.stats_interval", 0), ("run_dir", 5), ("checkpoint.dir", ""),
    ("train.init_from", " "),
]


@pytest.mark.parametrize("key, value", HOSTILE, ids=[f"{k}={v!r}" for k, v in HOSTILE])
def test_hostile_values_name_their_key(key, value, good_raw):
    raw = copy.deepcopy(good_raw)
    *group, name = key.split(".")
    (raw[group[0]] if group else raw)[name] = value
    with pytest.raises(ConfigError) as info:
        load_run_config(raw, world_size=1)
    assert info.value.key == key, str(info.value)
