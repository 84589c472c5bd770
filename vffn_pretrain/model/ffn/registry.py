"""Registry of MLP-slot builders keyed by `ffn.kind`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megatron.core.transformer.spec_utils import ModuleSpec


@dataclass(frozen=True)
class FFNSlot:
    mlp: ModuleSpec
    pre_mlp_layernorm: Any  # a norm class, or IdentityOp when the FFN module owns its norm
    mlp_bda: Callable  # factory like megatron's get_bias_dropout_add(training, fused)


_BUILDERS: dict[str, Callable] = {}


def register_ffn(kind: str):
    """Decorator: `builder(ffn_cfg, backend) -> FFNSlot` serves `ffn.kind == kind`."""

    def wrap(builder):
        _BUILDERS[kind] = builder
        return builder

    return wrap


def build_ffn_slot(kind: str, ffn_cfg, backend) -> FFNSlot:
    _import_builders()
    if kind not in _BUILDERS:
        raise KeyError(f"no FFN builder for ffn.kind={kind!r}; known: {registered_kinds()}")
    return _BUILDERS[kind](ffn_cfg, backend)


# Modules whose import registers builders; add a module here when adding an FFN kind.
BUILDER_MODULES = (
    "vffn_pretrain.model.ffn.dense",
    "vffn_pretrain.model.ffn.versatile",
    "vffn_pretrain.model.ffn.moe",
)


def _import_builders() -> None:
    import importlib

    for name in BUILDER_MODULES:
        importlib.import_module(name)


def registered_kinds() -> list[str]:
    _import_builders()
    return sorted(_BUILDERS)


# ---- TransformerConfig fields an FFN kind needs (e.g. the MoE baseline's num_moe_experts) ----

_CONFIG_OVERRIDES: dict[str, Callable] = {}


def register_config_overrides(kind: str):
    """Decorator: `hook(ffn_cfg, model_cfg, parallel_cfg) -> dict` of TransformerConfig fields for `ffn.kind`.

    The hook may raise ConfigError for combinations the kind cannot run (it sees the whole configuration)."""

    def wrap(hook):
        _CONFIG_OVERRIDES[kind] = hook
        return hook

    return wrap


def transformer_config_overrides(ffn_cfg, model_cfg, parallel_cfg) -> dict[str, Any]:
    """Extra TransformerConfig keyword arguments for `ffn_cfg.kind` ({} for kinds that need none)."""
    _import_builders()
    hook = _CONFIG_OVERRIDES.get(ffn_cfg.kind)
    return {} if hook is None else dict(hook(ffn_cfg, model_cfg, parallel_cfg))
