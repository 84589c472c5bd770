"""Per-item cost model of one pipeline micro-batch: FLOPs and stored activation bytes for the embedding, every
transformer layer (by its FFN kind and loop mix) and the LM head + loss.

Built on `model.counting` (its FLOP conventions: 2 per multiply-accumulate, matmuls only). An *item* is what a
megatron-core layout string names: `E` (embedding), `t` (one transformer layer), `L` (final norm, LM head and
loss). All figures are per micro-batch and per tensor-parallel rank.

Training costs of an adaptive-depth layer (versatile, depth_only) follow that layer's sampled loop mix q
(q[j-1] = share of tokens that sampled j loops): the forward runs every loop for every token; the backward and the
stored activations follow E[l] loops (and the width path only for tokens below L_max) with token-sparse recursion,
or all L_max loops without it (`counting.ffn_train_step_multiplier`). Eval follows the argmax mix.

Activation bytes are an estimate of what autograd keeps per token (bf16 unless told otherwise): the layer input
and norm outputs (h each, divided by TP under sequence parallelism), the QKV output, the attention output (and
the a*s score matrix per token when the attention is not flash/fused), and per FFN pass the norm input and output
(2h), fc1's output (2 d_ff / TP) and the SwiGLU output (d_ff / TP). Full recompute keeps only the layer input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vffn_pretrain.model import counting

RECOMPUTE_CHOICES = ("none", "full")


@dataclass(frozen=True)
class StepShape:
    """What one micro-batch looks like on one device: b sequences of s tokens, TP/SP, activation dtype size."""

    micro_batch: int
    seq_length: int
    tp: int = 1
    sp: bool = False
    bytes_per_value: int = 2
    flash_attention: bool = True
    token_sparse: bool = True

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_length


@dataclass(frozen=True)
class ItemCost:
    """One layout item for one micro-batch on one TP rank.

    symbol: 'E', 't' or 'L'; kind: 'embedding', the layer's FFN kind, or 'head'.
    forward_flops / backward_flops: without recompute. activation_bytes: kept from forward to backward.
    input_bytes: what full recompute keeps instead (the item's input). params: parameters on this TP rank.
    recompute: 'none' or 'full' (full: backward pays the forward again and only input_bytes are kept)."""

    symbol: str
    kind: str
    forward_flops: float
    backward_flops: float
    activation_bytes: float
    input_bytes: float
    params: float
    recompute: str = "none"

    def with_recompute(self, recompute: str) -> ItemCost:
        if recompute not in RECOMPUTE_CHOICES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_CHOICES}, got {recompute!r}")
        return dataclasses.replace(self, recompute=recompute)

    @property
    def backward_flops_effective(self) -> float:
        """Backward FLOPs including the recomputed forward when recompute is 'full' (transformer layers only)."""
        extra = self.forward_flops if self.recompute == "full" and self.symbol == "t" else 0.0
        return self.backward_flops + extra

    @property
    def stored_bytes(self) -> float:
        """Activation bytes held per in-flight micro-batch under this item's recompute setting."""
        return self.input_bytes if self.recompute == "full" and self.symbol == "t" else self.activation_bytes


def mean_loops(loop_mix: list[float]) -> float:
    return sum((i + 1) * q for i, q in enumerate(loop_mix))


def _one_layer(model: counting.ModelShape) -> counting.ModelShape:
    return dataclasses.replace(model, num_layers=1)


def layer_cost(model: counting.ModelShape, ffn: counting.FFNShape, step: StepShape,
               loop_mix: list[float] | None = None, eval_loop_mix: list[float] | None = None,
               training: bool = True) -> ItemCost:
    """Cost of one transformer layer. `loop_mix` is the sampled training mix (default uniform, what tau0 gives
    before training); `eval_loop_mix` the argmax mix used when `training=False` (default: `loop_mix`)."""
    d, tp, tokens = model.d_model, step.tp, step.tokens
    t = ffn.traits
    adaptive = t.adaptive_depth
    mix = loop_mix if (adaptive and loop_mix is not None) else (
        counting.uniform_loop_mix(ffn.max_loops) if adaptive else None)
    if training:
        parts = counting.flops_breakdown(_one_layer(model), ffn, training=True)
        dense_pass = 6.0 * d * model.d_ff
        ffn_total = 3.0 * dense_pass * counting.ffn_train_step_multiplier(ffn, loop_mix=mix,
                                                                          token_sparse=step.token_sparse)
        ffn_forward = parts["ffn"]
        ffn_backward = ffn_total - ffn_forward
    else:
        parts = counting.flops_breakdown(_one_layer(model), ffn, training=False,
                                         loop_mix=eval_loop_mix or mix if adaptive else None)
        ffn_forward, ffn_backward = parts["ffn"], 0.0
    attention = parts["attention_proj"] + parts["attention_core"]
    # Matmul work splits over TP; the router and loop head are replicated on every TP rank.
    forward = tokens * ((attention + ffn_forward) / tp + parts["router"])
    backward = tokens * (2.0 * attention / tp + ffn_backward / tp + 2.0 * parts["router"]) if training else 0.0

    seq_shard = tp if step.sp else 1  # tensors on the residual stream are sequence-sharded under SP
    kv = model.kv_heads * model.head_dim
    attn_values = 2 * d / seq_shard + (d + 2 * kv) / tp + d / tp  # x, norm(x), qkv, attention output
    if not step.flash_attention:
        attn_values += model.num_heads * model.seq_length / tp  # softmax probabilities, a*s per token
    per_pass = 2 * d / seq_shard + 3 * model.d_ff / tp  # norm in/out, fc1 out (gate, up), SwiGLU out
    if adaptive and training:
        kept_loops = mean_loops(mix) if step.token_sparse else float(ffn.max_loops)
        width_share = (1.0 - mix[-1]) if step.token_sparse else 1.0
        ffn_values = kept_loops * per_pass
        if t.width_path:
            ffn_values += width_share * model.d_ff / tp + ffn.num_experts + ffn.max_loops  # masked a1, logits
    elif t.fixed_loops:
        ffn_values = ffn.loops * per_pass
    elif t.has_router and not adaptive:  # one pass, the routed share (moe's experts, width_only's a1), logits
        ffn_values = per_pass * (1.0 + ffn.top_k / ffn.num_experts) + ffn.num_experts
    else:  # dense, and an adaptive kind at eval
        ffn_values = per_pass
    activation = tokens * step.bytes_per_value * (attn_values + ffn_values + d / seq_shard)  # + residual out
    params = counting.count_params(_one_layer(model), ffn)["params_per_layer"] / tp
    return ItemCost("t", ffn.kind, forward, backward, activation,
                    tokens * step.bytes_per_value * d / seq_shard, params)


def embedding_cost(model: counting.ModelShape, step: StepShape) -> ItemCost:
    """The token embedding: a lookup (no matmul FLOPs); it keeps only the token ids."""
    ids = step.tokens * 8
    return ItemCost("E", "embedding", 0.0, 0.0, ids, ids, model.vocab_size * model.d_model / step.tp)


def head_cost(model: counting.ModelShape, step: StepShape, training: bool = True) -> ItemCost:
    """Final norm, LM head (2 d V per token, split over TP) and the cross-entropy loss, which keeps the fp32
    softmax of this rank's vocabulary slice."""
    d, tp, tokens = model.d_model, step.tp, step.tokens
    seq_shard = tp if step.sp else 1
    forward = tokens * 2.0 * d * model.vocab_size / tp
    activation = tokens * (step.bytes_per_value * 2 * d / seq_shard + 4.0 * model.vocab_size / tp)
    params = (0 if model.tied_embeddings else model.vocab_size * d) / tp + d
    return ItemCost("L", "head", forward, 2.0 * forward if training else 0.0, activation,
                    tokens * step.bytes_per_value * d / seq_shard, params)


def model_items(model: counting.ModelShape, ffns: list[counting.FFNShape], step: StepShape,
                loop_mixes: list[list[float] | None] | None = None, training: bool = True) -> list[ItemCost]:
    """[E, t_1 .. t_n, L]: one entry per layout item in model order. `ffns[i]` and `loop_mixes[i]` describe
    layer i+1 (a loop mix of None means uniform)."""
    if len(ffns) != model.num_layers:
        raise ValueError(f"{len(ffns)} FFN kinds for {model.num_layers} layers")
    mixes = loop_mixes if loop_mixes is not None else [None] * model.num_layers
    layers = [layer_cost(model, f, step, q, training=training) for f, q in zip(ffns, mixes)]
    return [embedding_cost(model, step), *layers, head_cost(model, step, training)]
