"""The GPT layer spec: megatron-core's TransformerLayer with our backend's modules and the configured FFN slot."""

from __future__ import annotations

import logging

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)

from vffn_pretrain.model.backend import Backend
from vffn_pretrain.model.ffn import FFNSlot


class _KnownCustomMLP(logging.Filter):
    # TransformerLayer warns about any MLP class other than megatron's own; ours are deliberate.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Unknown MLP type" not in record.getMessage()


logging.getLogger("megatron.core.transformer.transformer_layer").addFilter(_KnownCustomMLP())


def gpt_layer_spec(backend: Backend, ffn: FFNSlot) -> ModuleSpec:
    """Pre-norm block: RMSNorm -> self-attention (RoPE, causal) -> +residual -> FFN slot."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=backend.norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=backend.column_parallel_linear,
                    core_attention=backend.core_attention,
                    linear_proj=backend.row_parallel_linear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=ffn.pre_mlp_layernorm,
            mlp=ffn.mlp,
            mlp_bda=ffn.mlp_bda,
        ),
    )


def gpt_block_spec(config, backend: Backend, ffn: FFNSlot | list[FFNSlot],
                   vp_stage: int | None) -> TransformerBlockSubmodules:
    """The layers this pipeline stage (and virtual stage) builds, and the final norm.

    ffn: one slot for every layer, or one per global layer (a mixed model); this stage takes the slots of its
    own layers, which start at megatron's layer offset for (pipeline rank, vp_stage)."""
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    if isinstance(ffn, FFNSlot):
        slots = [ffn] * num_layers
    else:
        offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
        slots = ffn[offset:offset + num_layers]
    specs = {id(slot): gpt_layer_spec(backend, slot) for slot in slots}
    return TransformerBlockSubmodules(layer_specs=[specs[id(slot)] for slot in slots], layer_norm=backend.norm)
