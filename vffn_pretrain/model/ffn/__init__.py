"""The MLP slot of the GPT layer spec: one builder per `ffn.kind`.

Each builder returns an `FFNSlot`: the module spec placed in `TransformerLayerSubmodules.mlp`, the pre-MLP norm
(IdentityOp when the module owns its norm) and the bias-dropout-add that joins its output to the residual.

Kinds: dense (dense.py), versatile / depth_only / width_only / kloop (versatile.py, one module sharing the dense
weights), moe (moe.py, megatron-core's MoELayer). The trainer-facing API (temperature, statistics, eval
overrides) is in state.py; dense-checkpoint key mapping in convert.py.
"""

__all__ = ["FFNSlot", "build_ffn_slot", "register_ffn"]


def __getattr__(name: str):
    # The registry needs megatron; importing it on first use keeps `ffn.config` (FFNConfig) importable without
    # torch, for vffn-info and the planner.
    if name in __all__:
        from vffn_pretrain.model.ffn import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
