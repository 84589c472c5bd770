"""`ffn.kind=dense`: megatron-core's SwiGLU MLP behind a pre-norm, the residual added by the layer."""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec

from vffn_pretrain.model.ffn.registry import FFNSlot, register_ffn


@register_ffn("dense")
def dense_slot(ffn_cfg, backend) -> FFNSlot:
    mlp = ModuleSpec(
        module=MLP,
        submodules=MLPSubmodules(
            linear_fc1=backend.column_parallel_linear, linear_fc2=backend.row_parallel_linear
        ),
    )
    return FFNSlot(mlp=mlp, pre_mlp_layernorm=backend.norm, mlp_bda=get_bias_dropout_add)
