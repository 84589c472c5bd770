"""Is the checkpoint about to be loaded the same model, on the same data, as this run describes?

The keys compared are those whose field declares `changes=MODEL` or `changes=DATA` (`config_fields`); the FFN
settings count only where a kind in use reads them (`model.kinds`): `ffn.loops` of a versatile model changes
nothing. A checkpoint records its run's resolved config (`common["config"]`); one without is not compared.

Each change reads `key: checkpoint's value -> this run's value`.
"""

from __future__ import annotations

import dataclasses

from vffn_pretrain.config.fields import DATA, MODEL, keys_that_change
from vffn_pretrain.data.config import DataConfig
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.kinds import traits
from vffn_pretrain.training.config import TrainConfig


def _saved_group(cls, values):
    """`cls` from a saved config's group: keys it no longer knows left out, no validation (a saved config was
    valid when it was saved). None when it cannot be built at all."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in dict(values or {}).items() if k in names})
    except (TypeError, ValueError):
        return None


def _value(config, name: str):
    """The value a key means: `model.num_query_groups` unset is one group per attention head."""
    value = getattr(config, name)
    if name == "num_query_groups" and value is None:
        return config.num_attention_heads
    return value


def _changed(group: str, names, old, new) -> list[str]:
    return [f"{group}.{n}: {getattr(old, n)!r} -> {getattr(new, n)!r}" for n in names
            if _value(old, n) != _value(new, n)]


def _layer_kinds(ffn: FFNConfig, num_layers: int) -> list[str] | None:
    try:
        return ffn.layer_kinds(num_layers)
    except (TypeError, ValueError):
        return None


def model_changes(saved: dict, model: ModelConfig, ffn: FFNConfig, step: int = 0) -> list[str]:
    """The MODEL keys whose values in the saved config `saved` differ from `model` / `ffn`, for a checkpoint of
    optimizer step `step` (a conversion ramp both configs have finished by then changes nothing any more)."""
    old_model, old_ffn = _saved_group(ModelConfig, saved.get("model")), _saved_group(FFNConfig, saved.get("ffn"))
    if old_model is None or old_ffn is None:
        return ["model/ffn: the checkpoint's config cannot be read"]
    out = _changed("model", keys_that_change(ModelConfig, MODEL), old_model, model)
    old_kinds, new_kinds = _layer_kinds(old_ffn, old_model.num_layers), ffn.layer_kinds(model.num_layers)
    if old_kinds != new_kinds:
        if old_ffn.layers is None and ffn.layers is None:
            out.append(f"ffn.kind: {old_ffn.kind!r} -> {ffn.kind!r}")
        else:
            out.append(f"ffn.layers: {old_kinds} -> {new_kinds}")
    read = {key for kind in set(new_kinds) | set(old_kinds or ()) for key in traits(kind).model_settings}
    if step >= max(old_ffn.blend_in_steps or 0, ffn.blend_in_steps or 0):
        read.discard("blend_in_steps")  # s = 1 from this step on in both
    out += _changed("ffn", [n for n in keys_that_change(FFNConfig, MODEL) if n in read], old_ffn, ffn)
    return out


def data_changes(saved: dict, data: DataConfig, train: TrainConfig) -> list[str]:
    """The DATA keys (data.*, train.seq_length, train.seed) whose values differ from the saved config's."""
    old_data, old_train = _saved_group(DataConfig, saved.get("data")), _saved_group(TrainConfig, saved.get("train"))
    out = []
    if old_data is not None:
        out += _changed("data", keys_that_change(DataConfig, DATA), old_data, data)
    if old_train is not None:
        out += _changed("train", keys_that_change(TrainConfig, DATA), old_train, train)
    return out


def dense_source_mismatch(saved: dict, model: ModelConfig) -> list[str]:
    """What keeps the saved config from being a dense model of this run's shape (train.init_from's source)."""
    old_model, old_ffn = _saved_group(ModelConfig, saved.get("model")), _saved_group(FFNConfig, saved.get("ffn"))
    if old_model is None or old_ffn is None:
        return ["model/ffn: the checkpoint's config cannot be read"]
    out = []
    kinds = _layer_kinds(old_ffn, old_model.num_layers) or [old_ffn.kind]
    if not all(traits(k).plain for k in kinds):  # a dense checkpoint: every layer one plain SwiGLU pass
        what = "ffn.kind" if old_ffn.layers is None else "ffn.layers"
        out.append(f"{what}: {old_ffn.kind if old_ffn.layers is None else kinds!r} (a dense checkpoint is needed)")
    return out + _changed("model", keys_that_change(ModelConfig, MODEL), old_model, model)
