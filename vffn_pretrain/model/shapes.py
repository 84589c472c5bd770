"""Config -> the shapes `model.counting` counts: the one adapter between the `model.*` / `ffn.*` settings and
ModelShape / FFNShape, used by the trainer (MFU), vffn-info, the scaling ladder and the planner. Torch-free."""

from __future__ import annotations

from vffn_pretrain.model.counting import FFNShape, ModelShape


def model_shape(model, *, tp: int = 1, seq_length: int) -> ModelShape:
    """The backbone of `model` (a ModelConfig) at tensor parallelism `tp`, whose padded vocabulary it counts."""
    return ModelShape(
        num_layers=model.num_layers, d_model=model.hidden_size, d_ff=model.ffn_hidden_size,
        num_heads=model.num_attention_heads, num_query_groups=model.num_query_groups,
        vocab_size=model.padded_vocab_size(tp), seq_length=seq_length, tied_embeddings=model.tied_embeddings,
    )


def ffn_shapes(ffn, num_layers: int) -> FFNShape | list[FFNShape]:
    """The FFN of `ffn` (an FFNConfig) over `num_layers` layers: one FFNShape when every layer has the same kind,
    else a list with each layer's shape (a mixed model, `ffn.layers`). Every kind gets the same settings."""
    kinds = ffn.layer_kinds(num_layers)
    shapes = {kind: FFNShape(kind, num_experts=ffn.num_experts, top_k=ffn.top_k, max_loops=ffn.max_loops,
                             loops=ffn.loops) for kind in dict.fromkeys(kinds)}
    if len(shapes) == 1:
        return shapes[kinds[0]]
    return [shapes[kind] for kind in kinds]


def counting_shapes(model, ffn, *, tp: int = 1, seq_length: int) -> tuple[ModelShape, FFNShape | list[FFNShape]]:
    """(ModelShape, FFNShape or per-layer list) of a model and FFN config, as :func:`model_shape` and
    :func:`ffn_shapes`."""
    return model_shape(model, tp=tp, seq_length=seq_length), ffn_shapes(ffn, model.num_layers)
