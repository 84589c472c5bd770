"""Which kernels the layer spec is built from: transformer-engine on a GPU that has it, else megatron-core's
local modules plus our RMSNorm and SDPA attention. Chosen once, at run time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from vffn_pretrain.model.attention import SDPACoreAttention
from vffn_pretrain.model.norm import RMSNorm


def transformer_engine_available() -> bool:
    """True when megatron-core's TE extension really works here (a GPU and a TE that imports cleanly).

    `import transformer_engine` is not enough: when `transformer_engine.pytorch` fails to import (an ABI mismatch,
    a missing library), megatron substitutes stand-ins and carries on, and the failure would only surface when the
    first TE module is built. megatron's own `HAVE_TE` flag records whether the real import succeeded."""
    if not torch.cuda.is_available():
        return False
    try:
        from megatron.core.extensions import transformer_engine as megatron_te
    except ImportError:
        return False
    return bool(getattr(megatron_te, "HAVE_TE", False))


@dataclass(frozen=True)
class Backend:
    """The module classes a layer spec plugs in. `name` is "te" or "local"."""

    name: str
    column_parallel_linear: type
    row_parallel_linear: type
    norm: type
    core_attention: type


def select_backend(prefer: str = "auto") -> Backend:
    """`prefer` is "auto" (TE when importable on GPU), "local" or "te" (an error if TE is unavailable)."""
    if prefer not in ("auto", "local", "te"):
        raise ValueError(f"backend must be auto, local or te, got {prefer!r}")
    use_te = prefer == "te" or (prefer == "auto" and transformer_engine_available())
    if use_te:
        if not transformer_engine_available():
            raise RuntimeError("backend 'te' asked for, but transformer-engine is not importable on a GPU")
        from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider

        te = TESpecProvider()
        return Backend("te", te.column_parallel_linear(), te.row_parallel_linear(),
                       te.layer_norm(rms_norm=True), te.core_attention())
    return Backend("local", ColumnParallelLinear, RowParallelLinear, RMSNorm, SDPACoreAttention)
