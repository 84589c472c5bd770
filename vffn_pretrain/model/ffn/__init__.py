"""The MLP slot of the GPT layer spec: one builder per `ffn.kind`.

Each builder returns an `FFNSlot`: the module spec placed in `TransformerLayerSubmodules.mlp`, the pre-MLP norm
(IdentityOp when the module owns its norm) and the bias-dropout-add that joins its output to the residual.

Kinds: dense (dense.py), versatile / depth_only / width_only / kloop (versatile.py, one module sharing the dense
weights), moe (moe.py, megatron-core's MoELayer). The trainer-facing API (temperature, statistics, eval
overrides) is in state.py; dense-checkpoint key mapping in convert.py.
"""

from vffn_pretrain.model.ffn.registry import FFNSlot, build_ffn_slot, register_ffn

__all__ = ["FFNSlot", "build_ffn_slot", "register_ffn"]
