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
BUILDER_MODULES = ("vffn_pretrain.model.ffn.dense",)


def _import_builders() -> None:
    import importlib

    for name in BUILDER_MODULES:
        importlib.import_module(name)


def registered_kinds() -> list[str]:
    _import_builders()
    return sorted(_BUILDERS)
