"""Closed-form parameter and FLOP counts for the GPT + (Versatile)FFN models of this project.

Pure arithmetic: nothing here allocates tensors or imports torch, so it is usable from launchers,
sweep planners and the scaling-law tools on any machine.

Architecture counted (docs/method.md §2, §9.1): pre-norm GPT blocks with RMSNorm (scale only) before attention
and before the FFN, a final RMSNorm, fused QKV without bias (grouped-query aware), attention output
projection without bias, SwiGLU FFN (fc1: d -> 2*d_ff, fc2: d_ff -> d, no bias), RoPE (no
parameters), token embedding and LM head over the *padded* vocabulary (untied unless
``tied_embeddings``).

FLOP conventions (docs/method.md §13), all per token:

* 2 FLOPs per multiply-accumulate; only matmuls are counted (norms, activations, softmax, RoPE,
  residual adds and the embedding lookup are ignored, as in docs/method.md and in Megatron's MFU formula).
* Attention projections: 2 * (QKV params + out-proj params) per layer.
* Attention core: QK^T and AV each cost 2 * d * T_eff FLOPs per query token, where d =
  num_heads * head_dim (GQA shares K/V heads but every query head still scores every key) and
  T_eff = T/2 for causal attention (the mean number of keys a query sees, dropping the O(1) diagonal
  term) or T for full attention. So the core is 2 * 2 * d * T_eff per layer: 2*T*d when causal.
* FFN: one dense SwiGLU pass costs F = 2 * 3 * d * d_ff = 6 * d * d_ff. The FFN variants scale F by
  the multiplier returned by :func:`ffn_flops_multiplier`.
* Router (d -> N) and loop head (d -> L_max): 2 * d * N and 2 * d * L_max.
* LM head: 2 * d * V_padded (once per token, not per layer).
* ``training=True`` returns forward + backward = 3 x forward (backward = 2 x forward: the
  gradients w.r.t. activations and w.r.t. weights each cost one forward's matmuls).

With these conventions the 354M dense model at T=4096 is 0.733 GFLOP/token forward, matching the
docs/method.md §13 breakdown (0.126 + 0.126 + 0.378 + 0.103).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from vffn_pretrain.model import kinds

# Kept importable from here; the table of kinds is model/kinds.py.
FFN_KINDS = kinds.FFN_KINDS
ADAPTIVE_DEPTH_KINDS = kinds.ADAPTIVE_DEPTH_KINDS  # kinds whose inference cost depends on a loop mix


@dataclass(frozen=True)
class ModelShape:
    """Shape of the transformer backbone.

    ``vocab_size`` must already be padded (see :func:`padded_vocab_size`): the embedding and LM
    head are allocated with the padded row count, so that is what gets counted.
    ``num_query_groups`` is the number of K/V heads (GQA); None means plain multi-head attention.
    """

    num_layers: int
    d_model: int
    d_ff: int
    num_heads: int
    num_query_groups: int | None
    vocab_size: int
    seq_length: int
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "d_model", "d_ff", "num_heads", "vocab_size", "seq_length"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelShape.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        groups = self.kv_heads
        if groups <= 0 or self.num_heads % groups:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by num_query_groups={groups}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_query_groups is None else self.num_query_groups


@dataclass(frozen=True)
class FFNShape:
    """Which FFN every layer uses, and its hyperparameters.

    kind: 'dense' (one SwiGLU pass), 'kloop' (the same residual FFN applied ``loops`` times),
    'moe' (docs/method.md §9.4: the dense FFN kept always on plus ``num_experts`` real experts of width
    d_ff/N, top-``top_k``), 'versatile' (docs/method.md §3-§6), 'width_only' (dense FFN always on plus
    top-k virtual experts, docs/method.md §10 Table 3), 'depth_only' (adaptive loop count, no width path).
    Fields irrelevant to a kind are ignored.
    """

    kind: str
    num_experts: int = 8
    top_k: int = 2
    max_loops: int = 4
    loops: int = 1

    @property
    def traits(self) -> kinds.KindTraits:
        """What the kind is made of (model/kinds.py)."""
        return kinds.traits(self.kind)

    def __post_init__(self) -> None:
        t = kinds.traits(self.kind)  # ValueError for an unknown kind
        if t.has_router:
            if self.num_experts <= 0 or not 0 < self.top_k <= self.num_experts:
                raise ValueError(
                    f"need 0 < top_k <= num_experts, got top_k={self.top_k}, num_experts={self.num_experts}"
                )
        if t.adaptive_depth and self.max_loops <= 0:
            raise ValueError(f"max_loops must be positive, got {self.max_loops}")
        if t.fixed_loops and self.loops <= 0:
            raise ValueError(f"loops must be positive, got {self.loops}")


def padded_vocab_size(vocab_size: int, tensor_parallel: int = 1, divisible_by: int = 128) -> int:
    """Round ``vocab_size`` up to a multiple of ``divisible_by * tensor_parallel`` (Megatron's rule:
    every TP rank gets an equal, 128-aligned slice of the embedding). 50,280 -> 50,304 at TP=1."""
    multiple = divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


def _check_expert_width(m: ModelShape, f: FFNShape) -> None:
    # The virtual experts are a contiguous equal partition of d_ff (docs/method.md §3.1, §12 #2) and the MoE
    # baseline's real experts are d_ff/N wide (§9.4): both need N | d_ff.
    if m.d_ff % f.num_experts:
        raise ValueError(f"d_ff={m.d_ff} is not divisible by num_experts={f.num_experts} ({f.kind})")


def _layer_groups(m: ModelShape, f: FFNShape | Sequence[FFNShape]) -> list[tuple[FFNShape, int]]:
    """(FFN shape, number of layers) for a uniform model or a per-layer list of shapes (a mixed model)."""
    if isinstance(f, FFNShape):
        return [(f, m.num_layers)]
    if len(f) != m.num_layers:
        raise ValueError(f"{len(f)} per-layer FFN shapes for num_layers={m.num_layers}")
    return list(Counter(f).items())


def count_params(m: ModelShape, f: FFNShape | Sequence[FFNShape]) -> dict:
    """Exact parameter counts.

    `f`: one FFNShape for every layer, or one per layer (a mixed model). For a mixed model the *_per_layer
    entries are lists (one value per layer) and everything else is summed over the layers.

    Returns a dict of ints:
      params_total, params_non_embedding (total minus the embedding and LM-head matrices; the norms
      stay in), params_embedding, params_lm_head (0 when tied), params_per_layer,
      params_attention_per_layer, params_ffn_per_layer (FFN weights + router/loop head/experts),
      params_ffn_extra_per_layer (what the variant adds over a dense SwiGLU), params_norms.
    """
    if not isinstance(f, FFNShape):
        return _count_params_mixed(m, list(f))
    d, d_ff = m.d_model, m.d_ff
    kv_dim = m.kv_heads * m.head_dim
    attn = d * (d + 2 * kv_dim) + d * d  # fused QKV + output projection
    dense_ffn = 3 * d * d_ff  # fc1 (d -> 2*d_ff, gate and value) + fc2 (d_ff -> d)

    # What a kind adds over one dense SwiGLU (k-loop reuses the same weights k times: nothing): a router d->N and
    # a loop head d->L_max, no bias (docs/method.md §8); moe's N real SwiGLU experts of width d_ff/N.
    t, n = f.traits, f.num_experts
    if t.has_router:
        _check_expert_width(m, f)
    extra = d * n * t.has_router + d * f.max_loops * t.has_loop_head + 3 * d * d_ff * t.moe

    norms_per_layer = 2 * d
    per_layer = attn + dense_ffn + extra + norms_per_layer
    norms = m.num_layers * norms_per_layer + d  # + final norm
    embedding = m.vocab_size * d
    lm_head = 0 if m.tied_embeddings else m.vocab_size * d
    total = m.num_layers * per_layer + d + embedding + lm_head
    return {
        "params_total": total,
        "params_non_embedding": total - embedding - lm_head,
        "params_embedding": embedding,
        "params_lm_head": lm_head,
        "params_per_layer": per_layer,
        "params_attention_per_layer": attn,
        "params_ffn_per_layer": dense_ffn + extra,
        "params_ffn_extra_per_layer": extra,
        "params_norms": norms,
    }


def _count_params_mixed(m: ModelShape, shapes: list[FFNShape]) -> dict:
    _layer_groups(m, shapes)  # checks the length
    one = dataclasses.replace(m, num_layers=1)
    per = {shape: count_params(one, shape) for shape in set(shapes)}
    layers = [per[shape] for shape in shapes]
    first = layers[0]
    total = first["params_embedding"] + first["params_lm_head"] + m.d_model + sum(c["params_per_layer"]
                                                                                   for c in layers)
    out = {
        "params_total": total,
        "params_non_embedding": total - first["params_embedding"] - first["params_lm_head"],
        "params_embedding": first["params_embedding"],
        "params_lm_head": first["params_lm_head"],
        "params_norms": m.num_layers * 2 * m.d_model + m.d_model,
    }
    for key in ("params_per_layer", "params_attention_per_layer", "params_ffn_per_layer",
                "params_ffn_extra_per_layer"):
        out[key] = [c[key] for c in layers]
    return out


def uniform_loop_mix(max_loops: int) -> list[float]:
    """The default eval loop mix: every loop count 1..L_max equally likely."""
    return [1.0 / max_loops] * max_loops


def _validate_loop_mix(loop_mix: list[float], max_loops: int) -> list[float]:
    p = [float(x) for x in loop_mix]
    if len(p) != max_loops:
        raise ValueError(f"loop_mix has {len(p)} entries, expected max_loops={max_loops}")
    if any(x < 0 or not math.isfinite(x) for x in p):
        raise ValueError(f"loop_mix entries must be finite and >= 0, got {p}")
    if abs(sum(p) - 1.0) > 1e-6:
        raise ValueError(f"loop_mix must sum to 1, got sum {sum(p)}")
    return p


# How the code computes the width path's fc2. Both forms reuse loop 1's activations a1 (docs/method.md §7), so the width
# path never pays a second fc1:
#   "sparse": each virtual expert multiplies only its own tokens' slices, (k/N)/3 of F;
#   "masked_dense": one full fc2 over the masked a1, 1/3 of F. width_only computes H + fc2((1 + m) ⊙ a1), which
#       folds the routed experts into its dense pass: nothing on top of F.
WIDTH_FORMS = ("sparse", "masked_dense")


def width_path_form(kind: str, tp_size: int, device_type: str = "cpu") -> str:
    """The form in which the model computes the width path for this layout: one of WIDTH_FORMS.

    The single statement of that choice: VersatileFFN's width path (training and eval) follows it and the
    trainer's executed-FLOP count (MFU) asks it. Sparse only where one rank holds every hidden unit on a CPU: on a
    GPU the sparse form's per-expert sizes cost a host sync and N small GEMMs, which the saved FLOPs do not pay back
    at the paper's N=8, k=2, and under TP it would load the ranks holding popular experts more. width_only always
    folds its experts into the one masked-dense fc2."""
    if kinds.traits(kind).width_folded:
        return "masked_dense"
    return "sparse" if tp_size == 1 and device_type == "cpu" else "masked_dense"


def _width_cost(f: FFNShape, width_reuse: bool, width_form: str | None) -> float:
    """The width path's forward cost per token in units of F, for the kinds that have one."""
    kn = f.top_k / f.num_experts
    if width_form is None:  # the paper's accounting (docs/method.md §13), optionally with the §7 reuse
        return kn / 3.0 if width_reuse else kn
    if width_form not in WIDTH_FORMS:
        raise ValueError(f"width_form must be None or one of {WIDTH_FORMS}, got {width_form!r}")
    if f.traits.width_folded:  # its experts ride in its one masked fc2 whatever the layout's form
        return 0.0
    return kn / 3.0 if width_form == "sparse" else 1.0 / 3.0


def ffn_flops_multiplier(
    f: FFNShape, *, training: bool, loop_mix: list[float] | None = None, width_reuse: bool = False,
    width_form: str | None = None,
) -> float:
    """Forward FFN cost per token in units of one dense SwiGLU pass F (docs/method.md §13).

    dense 1; kloop k; moe 1 + k/N; width_only 1 + k/N; versatile training L_max + k/N (every loop
    and the width path run for every token); versatile eval sum_l p_l*l + P(l < L_max)*k/N;
    depth_only training L_max, eval sum_l p_l*l.

    ``loop_mix[i]`` is the fraction of tokens that use i+1 loops (default uniform); it only matters
    for adaptive-depth kinds at eval and is ignored otherwise. ``width_reuse`` applies the docs/method.md §7
    identity: the width path reuses loop 1's up/gate activations and only pays its k/N share of fc2,
    i.e. (k/N)/3 of F instead of k/N (versatile and width_only only). ``width_form`` (one of
    WIDTH_FORMS, see :func:`width_path_form`) instead counts the width path as the code computes it,
    which is what MFU needs; it overrides ``width_reuse``.
    """
    t = f.traits
    if t.moe:
        return 1.0 + f.top_k / f.num_experts  # real experts: no reuse possible
    width = _width_cost(f, width_reuse, width_form) if t.width_path else 0.0
    if training or not t.adaptive_depth:  # every loop (1, k or L_max) and the width path run for every token
        return float(t.loop_count(f)) + width
    p = _validate_loop_mix(loop_mix if loop_mix is not None else uniform_loop_mix(f.max_loops), f.max_loops)
    mean_loops = sum((i + 1) * pi for i, pi in enumerate(p))
    p_below_max = sum(p[:-1])  # tokens at L_max skip the width path at inference (docs/method.md §5)
    return mean_loops + p_below_max * width


def ffn_train_step_multiplier(
    f: FFNShape, *, loop_mix: list[float] | None = None, token_sparse: bool = False, width_reuse: bool = False,
    width_form: str | None = None,
) -> float:
    """Forward + backward FFN cost per token in training, in units of one dense SwiGLU forward + backward (3F).

    The backward pass costs twice the forward of whatever kept an autograd graph. Without token-sparse recursion
    that is everything (so the ratio equals ``ffn_flops_multiplier(training=True)``); with it, an adaptive kind
    keeps the graph of each token's own sampled loops, E[l] = sum_l p_l*l, and of the width path only for tokens
    below L_max (lambda > 0), while the forward still runs every loop for every token (the straight-through
    gradient needs their values). ``loop_mix`` is the sampled mix (default uniform); ``width_reuse`` and
    ``width_form`` as in :func:`ffn_flops_multiplier`."""
    forward = ffn_flops_multiplier(f, training=True, width_reuse=width_reuse, width_form=width_form)
    if not token_sparse or not f.traits.adaptive_depth:
        return forward
    p = _validate_loop_mix(loop_mix if loop_mix is not None else uniform_loop_mix(f.max_loops), f.max_loops)
    mean_loops = sum((i + 1) * pi for i, pi in enumerate(p))
    width = _width_cost(f, width_reuse, width_form) if f.traits.width_path else 0.0
    backward_graph = mean_loops + sum(p[:-1]) * width
    return (forward + 2.0 * backward_graph) / 3.0


def flops_breakdown(
    m: ModelShape,
    f: FFNShape | Sequence[FFNShape],
    *,
    training: bool,
    loop_mix: list[float] | None = None,
    width_reuse: bool = False,
    causal: bool = True,
    width_form: str | None = None,
    token_sparse: bool = False,
) -> dict:
    """FLOPs per token by component, summed over layers (see the module docstring for conventions).

    `f`: one FFNShape for every layer, or one per layer (a mixed model; `loop_mix` then applies to each
    adaptive-depth layer). With ``token_sparse`` (training only) the FFN's backward pass follows ``loop_mix``,
    the sampled mix (:func:`ffn_train_step_multiplier`); the FFN's forward, and every other component, are
    unchanged. Keys: attention_proj, attention_core, ffn, router (router + loop head), lm_head, forward (their
    sum, forward pass) and total (forward, or forward + backward when ``training``).
    """
    if not isinstance(f, FFNShape):
        out = dict.fromkeys(("attention_proj", "attention_core", "ffn", "router"), 0.0)
        passes = 3.0 if training else 1.0
        total = 0.0
        for shape, count in _layer_groups(m, f):
            part = flops_breakdown(dataclasses.replace(m, num_layers=count), shape, training=training,
                                   loop_mix=loop_mix if shape.traits.adaptive_depth else None,
                                   width_reuse=width_reuse, causal=causal, token_sparse=token_sparse,
                                   width_form=width_form)
            for key in out:
                out[key] += part[key]
            total += part["total"] - passes * part["lm_head"]  # the head is counted once, below
        out["lm_head"] = 2.0 * m.d_model * m.vocab_size
        out["forward"] = sum(out.values())
        out["total"] = total + passes * out["lm_head"]
        return out
    d, L = m.d_model, m.num_layers
    kv_dim = m.kv_heads * m.head_dim
    t_eff = m.seq_length / 2.0 if causal else float(m.seq_length)

    attention_proj = L * 2.0 * (d * (d + 2 * kv_dim) + d * d)
    attention_core = L * 2.0 * 2.0 * d * t_eff
    ffn = (
        L
        * 6.0
        * d
        * m.d_ff
        * ffn_flops_multiplier(f, training=training, loop_mix=loop_mix, width_reuse=width_reuse,
                               width_form=width_form)
    )

    t, n, k_max = f.traits, f.num_experts, f.max_loops
    routed = 1.0  # the share of tokens the router runs for: all of them in training (docs/method.md §5)
    if t.width_path and t.adaptive_depth and not training:
        # Inference: the loop head runs for every token, the router only for tokens with
        # l < L_max, which are the only ones that take the width path (Algorithm 2).
        p = _validate_loop_mix(loop_mix if loop_mix is not None else uniform_loop_mix(k_max), k_max)
        routed = sum(p[:-1])
    router = 2.0 * d * (k_max * t.has_loop_head + n * t.has_router * routed)
    router *= L

    lm_head = 2.0 * d * m.vocab_size
    forward = attention_proj + attention_core + ffn + router + lm_head
    total = 3.0 * forward if training else forward
    if training and token_sparse:  # the FFN's backward follows the sampled loops
        ffn_step = 3.0 * L * 6.0 * d * m.d_ff * ffn_train_step_multiplier(
            f, loop_mix=loop_mix, token_sparse=True, width_reuse=width_reuse, width_form=width_form)
        total = 3.0 * (forward - ffn) + ffn_step
    return {
        "attention_proj": attention_proj,
        "attention_core": attention_core,
        "ffn": ffn,
        "router": router,
        "lm_head": lm_head,
        "forward": forward,
        "total": total,
    }


def flops_per_token(
    m: ModelShape,
    f: FFNShape | Sequence[FFNShape],
    *,
    training: bool,
    loop_mix: list[float] | None = None,
    width_reuse: bool = False,
    causal: bool = True,
    width_form: str | None = None,
    token_sparse: bool = False,
) -> float:
    """Model FLOPs per token: the forward pass, or forward + backward (3x) when ``training``.

    By default the algorithm's count (training: all L_max loops and the width path, forward and backward), the
    number used for C = flops_per_token * tokens in scaling fits. For throughput and MFU, count what the code
    executes: ``width_form`` (see :func:`width_path_form`) for the width path's form, and ``token_sparse`` with the
    sampled ``loop_mix`` for the backward pass of token-sparse recursion.
    """
    return flops_breakdown(
        m, f, training=training, loop_mix=loop_mix, width_reuse=width_reuse, causal=causal,
        width_form=width_form, token_sparse=token_sparse,
    )["total"]
