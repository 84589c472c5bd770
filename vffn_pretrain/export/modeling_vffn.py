"""Hugging Face `transformers` model for the FFN variants of vffn-pretrain (VersatileFFN, its ablations, k-loop,
MoE), in plain torch. Self-contained: `vffn-export` copies this file into the exported directory, and
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` loads it without vffn-pretrain installed.
Needs transformers >= 5.

The block is the trainer's: pre-norm RMSNorm, causal self-attention with RoPE (half rotation) and grouped query
heads, no biases, untied embeddings. The FFN is the trainer's eval path (the method's inference mode):

* versatile / depth_only: each token's loop count l = argmax(W_loop H) + 1 (no noise); the shared SwiGLU FFN
  (with its own RMSNorm) is applied residually l times, each token leaving after its own count (early exit).
  versatile then mixes in the width path for tokens with l < L_max: Y = lam * (H + W_down(m * a1)) + (1 - lam) *
  H^(l), lam = (L_max - l) / L_max, a1 the loop-1 activations, m each hidden unit's expert gate (top-k of the
  router's logits on H, softmax over the k). Tokens at l = L_max skip the width path (lam = 0).
* kloop: every token runs `loops` loops. width_only: Y = H + W_down((1 + m) * a1).
* moe: the dense SwiGLU FFN as an always-on shared expert plus N experts of width d_ff / N, top-k routing with
  a softmax over the k selected logits; behind the usual pre-FFN norm and residual.
* dense (a layer of a mixed model, `layer_kinds`): the plain SwiGLU FFN behind the pre-FFN norm and residual.

A mixed model (the trainer's `ffn.layers`) lists each layer's kind in `layer_kinds`; every layer uses the shared
settings (`num_experts`, `top_k`, `max_loops`; `loops` for kloop layers).

Routers and loop heads sum their products in float64 and round to fp32 once, as the trainer does (the decisions
then do not depend on TF32 or the device), on the un-normalised residual stream H (moe: on the normalised input).
`output_loops=True` returns each layer's per-token loop counts in `outputs.loops` ([layers, batch, seq]).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

FFN_KINDS = ("versatile", "depth_only", "width_only", "kloop", "moe")
LAYER_KINDS = (*FFN_KINDS, "dense")  # what a layer of a mixed model may be


class VffnConfig(PreTrainedConfig):
    """Shapes as in vffn-pretrain's `model.*`; `ffn_kind`, `num_experts`, `top_k`, `max_loops` as in `ffn.*`
    (for kloop, `max_loops` is the fixed loop count, unless `loops` gives it; 1 for width_only). `vocab_size` is
    the padded embedding size. What a layer's FFN is made of comes as flags (vffn-pretrain's kind traits, written
    by vffn-export): `ffn_width_path` (a router over virtual experts), `ffn_adaptive_depth` (a loop head),
    `ffn_moe` (real experts beside the shared one). A mixed model (`ffn.layers`) names each layer's kind in
    `layer_kinds` and gives each layer's flags in `layer_ffns` ({"width_path", "adaptive_depth", "moe", "plain":
    a dense layer, "loops": its most loops}); None = every layer is `ffn_kind` with the flags above."""

    model_type = "vffn"

    vocab_size: int = 8192
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 4096
    rotary_base: float = 10000.0
    rms_norm_eps: float = 1e-6
    ffn_kind: str = "versatile"
    num_experts: int = 8
    top_k: int = 2
    max_loops: int = 4
    loops: int | None = None
    ffn_width_path: bool = True
    ffn_adaptive_depth: bool = True
    ffn_moe: bool = False
    layer_kinds: list[str] | None = None
    layer_ffns: list[dict] | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.ffn_kind not in LAYER_KINDS:
            raise ValueError(f"ffn_kind must be one of {LAYER_KINDS}, got {self.ffn_kind!r}")
        if self.layer_kinds is not None and (len(self.layer_kinds) != self.num_hidden_layers
                                             or any(k not in LAYER_KINDS for k in self.layer_kinds)):
            raise ValueError(f"layer_kinds must name one of {LAYER_KINDS} for each of the {self.num_hidden_layers} "
                             f"layers, got {self.layer_kinds!r}")
        if self.layer_ffns is not None and len(self.layer_ffns) != self.num_hidden_layers:
            raise ValueError(f"layer_ffns must give the flags of each of the {self.num_hidden_layers} layers, got "
                             f"{len(self.layer_ffns)}")
        super().__post_init__(**kwargs)

    def ffn_of_layer(self, index: int) -> dict:
        """Layer `index`'s FFN flags (see the class docstring)."""
        if self.layer_ffns is not None:
            return self.layer_ffns[index]
        return {"width_path": self.ffn_width_path, "adaptive_depth": self.ffn_adaptive_depth, "moe": self.ffn_moe,
                "plain": False, "loops": self.max_loops}


# transformers renamed `past_key_values` to `cache` during 5.x: accept and return whichever this version uses.
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


@dataclass
class VffnCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus `loops`: [layers, batch, seq] int64 loop counts (with output_loops=True)."""

    loops: torch.Tensor | None = None


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim, computed in fp32, returned in the input dtype."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: VffnConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads = config.num_attention_heads
        self.groups = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.groups * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.groups * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False)

    def forward(self, x, cos, sin, mask, cache: Cache | None):
        """x [b, s, h]; cos/sin [b, s, head_dim] (fp32); mask None (plain causal) or bool [b, 1, s, k] (True =
        attend)."""
        b, s, _ = x.shape
        q, k, v = (proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.groups != self.heads:
            k = k.repeat_interleave(self.heads // self.groups, dim=1)
            v = v.repeat_interleave(self.heads // self.groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); `activations` gives the inner product silu(gate(x)) * up(x)."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.gate_proj(x)) * self.up_proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activations(x))


def head_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 logits of a router or loop head, summed in float64 (the trainer's `router_logits`)."""
    return F.linear(hidden.double(), weight.double()).float()


def top_k_gates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """fp32 logits [T, N] -> gates [T, N]: softmax over the k largest logits, zero elsewhere."""
    values, index = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, index, values.softmax(-1))


class SharedWeightFFN(nn.Module):
    """versatile | depth_only | width_only | kloop: one SwiGLU weight set and norm, reused by every loop and by
    the width path. Input H [b, s, h] (the residual stream after attention), output the block output Y."""

    def __init__(self, config: VffnConfig, ffn: dict):
        super().__init__()
        self.width_path, self.adaptive_depth = ffn["width_path"], ffn["adaptive_depth"]
        self.max_loops = ffn["loops"]
        self.num_experts, self.top_k = config.num_experts, config.top_k
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn = SwiGLU(config.hidden_size, config.intermediate_size)
        if self.width_path:
            self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        if self.adaptive_depth:
            self.loop_head = nn.Linear(config.hidden_size, self.max_loops, bias=False)

    def _unit_gates(self, h: torch.Tensor) -> torch.Tensor:
        """[T, d_ff] gate of each hidden unit's virtual expert (expert e owns units [e*d_ff/N, (e+1)*d_ff/N))."""
        gates = top_k_gates(head_logits(h, self.router.weight), self.top_k)
        width = self.ffn.down_proj.in_features // self.num_experts
        return gates.repeat_interleave(width, dim=-1)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (Y [b, s, h], loop counts [b, s] int64)."""
        shape = hidden.shape
        h = hidden.reshape(-1, shape[-1])
        L = self.max_loops
        if self.adaptive_depth:
            loops = head_logits(h, self.loop_head.weight).argmax(-1) + 1
        else:
            loops = torch.full(h.shape[:1], L, dtype=torch.int64, device=h.device)
        z, a1 = h.clone(), None
        for step in range(1, L + 1):
            active = (loops >= step).nonzero().squeeze(1)  # per-token early exit
            if active.numel() == 0:
                break
            zi = z.index_select(0, active)
            a = self.ffn.activations(self.norm(zi))
            if step == 1:
                a1 = a  # every token runs loop 1
            z.index_copy_(0, active, zi + self.ffn.down_proj(a))
        if self.width_path and not self.adaptive_depth:  # width_only: the width path rides in the one pass
            z = h + self.ffn.down_proj(a1 * (1 + self._unit_gates(h)).to(a1.dtype))
        elif self.width_path:
            width = (loops < L).nonzero().squeeze(1)  # tokens at L_max skip the width path
            if width.numel():
                hw = h.index_select(0, width)
                y_width = hw + self.ffn.down_proj(a1.index_select(0, width) * self._unit_gates(hw).to(a1.dtype))
                lam = ((L - loops.index_select(0, width).float()) / L).unsqueeze(-1)
                y = lam * y_width.float() + (1 - lam) * z.index_select(0, width).float()
                z.index_copy_(0, width, y.to(z.dtype))
        return z.view(shape), loops.view(shape[:-1])


class MoE(nn.Module):
    """The MoE baseline's FFN on the normalised input u [b, s, h]: shared(u) + sum_topk p_e expert_e(u)."""

    def __init__(self, config: VffnConfig):
        super().__init__()
        self.top_k = config.top_k
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        width = config.intermediate_size // config.num_experts
        self.experts = nn.ModuleList(SwiGLU(config.hidden_size, width) for _ in range(config.num_experts))
        self.shared_expert = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        flat = u.reshape(-1, u.shape[-1])
        gates = top_k_gates(head_logits(flat, self.router.weight), self.top_k)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = gates[:, e].nonzero().squeeze(1)
            if rows.numel():
                y = expert(flat.index_select(0, rows)) * gates.index_select(0, rows)[:, e:e + 1].to(flat.dtype)
                out.index_add_(0, rows, y)
        return (out + self.shared_expert(flat)).view(u.shape)


class DecoderLayer(nn.Module):
    def __init__(self, config: VffnConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        ffn = config.ffn_of_layer(layer_idx)
        if ffn["moe"] or ffn["plain"]:
            self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp = MoE(config) if ffn["moe"] else SwiGLU(config.hidden_size, config.intermediate_size)
        else:  # the FFN owns its norm and returns the whole block output
            self.mlp = SharedWeightFFN(config, ffn)

    def forward(self, x, cos, sin, mask, cache):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        if not isinstance(self.mlp, SharedWeightFFN):  # moe, dense: behind the pre-FFN norm, no loops
            return h + self.mlp(self.post_attention_layernorm(h)), None
        return self.mlp(h)


class VffnPreTrainedModel(PreTrainedModel):
    config_class = VffnConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class VffnModel(VffnPreTrainedModel):
    def __init__(self, config: VffnConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [b, s, head_dim] fp32 for positions [b, s]. Computed per call rather than kept in a buffer:
        from_pretrained may build the model on the meta device, and a non-persistent buffer would stay empty."""
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim
        inv_freq = 1.0 / (self.config.rotary_base ** exponent)
        freqs = position_ids.float().unsqueeze(-1) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        """Returns (hidden [b, s, h], cache or None, loops [layers, b, s] (None entries for moe))."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + s, device=x.device).unsqueeze(0).expand(b, -1)
        cos, sin = self.rotary(position_ids)
        mask = None
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if padded or past:
            # Explicit causal mask: query i (absolute position past + i) sees keys 0 .. past + i, minus padding.
            keys = past + s
            causal = torch.ones(s, keys, dtype=torch.bool, device=x.device).tril(diagonal=past)
            mask = causal.view(1, 1, s, keys).expand(b, 1, s, keys)
            if attention_mask is not None:
                mask = mask & attention_mask.bool()[:, -keys:].view(b, 1, 1, keys)
                # A padding query would see no key at all (NaN rows that leak into later layers through V):
                # let every query see its own position.
                own = torch.arange(keys, device=x.device) == torch.arange(past, past + s, device=x.device)[:, None]
                mask = mask | own.view(1, 1, s, keys)
        loops = []
        for layer in self.layers:
            x, layer_loops = layer(x, cos, sin, mask, past_key_values if use_cache else None)
            loops.append(layer_loops)
        return self.norm(x), (past_key_values if use_cache else None), loops


class VffnForCausalLM(VffnPreTrainedModel, GenerationMixin):
    def __init__(self, config: VffnConfig):
        super().__init__(config)
        self.model = VffnModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, output_loops=False, logits_to_keep=0, past_key_values=None,
                **kwargs) -> VffnCausalLMOutput:
        hidden, cache, loops = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids,
                                          past_key_values=cache if cache is not None else past_key_values,
                                          inputs_embeds=inputs_embeds, use_cache=use_cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        stacked = None
        if output_loops and all(t is not None for t in loops):
            stacked = torch.stack(loops)
        return VffnCausalLMOutput(loss=loss, logits=logits, loops=stacked, **{CACHE_FIELD: cache})
