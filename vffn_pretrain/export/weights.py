"""Megatron GPT state dict (one process, TP = PP = 1) -> Hugging Face state dicts, and the matching configs.

Megatron layouts undone here:
* `self_attention.linear_qkv.weight` [(heads + 2 groups) * d, h] is grouped per query group: for each group g,
  the rows of its heads' queries (heads/groups * d), then its key (d), then its value (d). HF keeps q_proj,
  k_proj, v_proj apart, heads in order (query head i uses key/value group i // (heads/groups) in both).
* `linear_fc1.weight` [2 * d_ff, h] is [gate ; up] (at TP = 1 the global layout); HF splits gate_proj / up_proj.
* Norms: megatron's dense / MoE layers hold the pre-FFN norm as `pre_mlp_layernorm`; the shared-weight kinds
  own it inside the FFN (`mlp.norm`).
RoPE needs no permutation: megatron's rotary embedding (rotary_interleaved=False) rotates halves, as HF Llama.
The vocabulary stays padded (config.vocab_size = the embedding's rows), so logits have megatron's shape.
"""

from __future__ import annotations

import torch

from vffn_pretrain.model.kinds import SHARED_WEIGHT_KINDS, traits  # noqa: F401 (SHARED_WEIGHT_KINDS: importable here)


def _split_qkv(qkv: torch.Tensor, heads: int, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = qkv.shape[0] // (heads + 2 * groups)
    per = heads // groups
    blocks = qkv.view(groups, per + 2, d, -1)
    q = blocks[:, :per].reshape(heads * d, -1)
    k = blocks[:, per].reshape(groups * d, -1)
    v = blocks[:, per + 1].reshape(groups * d, -1)
    return q, k, v


def _swiglu(fc1: torch.Tensor, fc2: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    gate, up = fc1.chunk(2, dim=0)
    return {f"{prefix}gate_proj.weight": gate, f"{prefix}up_proj.weight": up, f"{prefix}down_proj.weight": fc2}


def megatron_to_hf(sd: dict[str, torch.Tensor], model_cfg, ffn_cfg) -> dict[str, torch.Tensor]:
    """`sd`: GPTModel.state_dict() at TP = PP = 1 (`_extra_state` entries are ignored). Returns the state dict
    of LlamaForCausalLM (every layer dense) or of modeling_vffn.VffnForCausalLM (otherwise; each layer mapped
    by its own kind, `ffn.layers`); tensors are views or copies in the input dtype."""
    layer_kinds = [traits(k) for k in ffn_cfg.layer_kinds(model_cfg.num_layers)]  # ValueError: unknown kind
    heads = model_cfg.num_attention_heads
    groups = model_cfg.num_query_groups or heads
    out = {
        "model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
        "model.norm.weight": sd["decoder.final_layernorm.weight"],
        "lm_head.weight": sd["output_layer.weight" if "output_layer.weight" in sd
                             else "embedding.word_embeddings.weight"],
    }
    for i, kind in enumerate(layer_kinds):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = _split_qkv(sd[src + "self_attention.linear_qkv.weight"], heads, groups)
        out.update({
            dst + "input_layernorm.weight": sd[src + "input_layernorm.weight"],
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": sd[src + "self_attention.linear_proj.weight"],
        })
        if kind.moe:
            out[dst + "post_attention_layernorm.weight"] = sd[src + "pre_mlp_layernorm.weight"]
            out[dst + "mlp.router.weight"] = sd[src + "mlp.router.weight"]
            out.update(_swiglu(sd[src + "mlp.shared_experts.linear_fc1.weight"],
                               sd[src + "mlp.shared_experts.linear_fc2.weight"], dst + "mlp.shared_expert."))
            for e in range(ffn_cfg.num_experts):
                expert = f"{src}mlp.experts.local_experts.{e}."
                out.update(_swiglu(sd[expert + "linear_fc1.weight"], sd[expert + "linear_fc2.weight"],
                                   f"{dst}mlp.experts.{e}."))
        elif kind.shared_weights:
            out[dst + "mlp.norm.weight"] = sd[src + "mlp.norm.weight"]
            out.update(_swiglu(sd[src + "mlp.linear_fc1.weight"], sd[src + "mlp.linear_fc2.weight"],
                               dst + "mlp.ffn."))
            for head in ("router", "loop_head"):
                if src + f"mlp.{head}.weight" in sd:
                    out[dst + f"mlp.{head}.weight"] = sd[src + f"mlp.{head}.weight"]
        else:  # dense
            out[dst + "post_attention_layernorm.weight"] = sd[src + "pre_mlp_layernorm.weight"]
            out.update(_swiglu(sd[src + "mlp.linear_fc1.weight"], sd[src + "mlp.linear_fc2.weight"], dst + "mlp."))
    return out


def _shape_kwargs(model_cfg, vocab_size: int, tokenizer_ids: dict) -> dict:
    """The config fields a Llama and a Vffn export share (`vocab_size`: the padded embedding rows)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.ffn_hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        num_key_value_heads=model_cfg.num_query_groups or model_cfg.num_attention_heads,
        max_position_embeddings=model_cfg.max_position_embeddings,
        rms_norm_eps=model_cfg.norm_epsilon,
        tie_word_embeddings=bool(model_cfg.tied_embeddings),
        initializer_range=model_cfg.init_std,
        **tokenizer_ids,
    )


def llama_config_kwargs(model_cfg, vocab_size: int, tokenizer_ids: dict) -> dict:
    """LlamaConfig keyword arguments for a dense megatron model."""
    return dict(
        _shape_kwargs(model_cfg, vocab_size, tokenizer_ids),
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": float(model_cfg.rotary_base)},
        attention_bias=False,
        mlp_bias=False,
    )


def is_plain(model_cfg, ffn_cfg) -> bool:
    """Whether every layer is dense: the export is then a plain Llama."""
    return all(traits(k).plain for k in ffn_cfg.layer_kinds(model_cfg.num_layers))


def _layer_ffn(kind, ffn_cfg) -> dict:
    """One layer's FFN flags as modeling_vffn reads them (VffnConfig.layer_ffns)."""
    return {"width_path": kind.width_path, "adaptive_depth": kind.adaptive_depth, "moe": kind.moe,
            "plain": kind.plain, "loops": kind.loop_count(ffn_cfg)}


def vffn_config_kwargs(model_cfg, ffn_cfg, vocab_size: int, tokenizer_ids: dict) -> dict:
    """VffnConfig keyword arguments for a megatron model with any non-dense layer (`ffn.layers`: each layer's
    kind in `layer_kinds`)."""
    kind = traits(ffn_cfg.kind)
    loops = ffn_cfg.max_loops if kind.moe else kind.loop_count(ffn_cfg)  # moe has no loops: ffn.max_loops as given
    mixed = ffn_cfg.layers is not None
    layer_kinds = ffn_cfg.layer_kinds(model_cfg.num_layers)
    return dict(
        _shape_kwargs(model_cfg, vocab_size, tokenizer_ids),
        rotary_base=float(model_cfg.rotary_base),
        ffn_kind=ffn_cfg.kind,
        num_experts=ffn_cfg.num_experts,
        top_k=ffn_cfg.top_k,
        max_loops=ffn_cfg.max_loops if mixed else loops,
        loops=ffn_cfg.loops if mixed else None,
        ffn_width_path=kind.width_path,
        ffn_adaptive_depth=kind.adaptive_depth,
        ffn_moe=kind.moe,
        layer_kinds=layer_kinds if mixed else None,
        layer_ffns=[_layer_ffn(traits(k), ffn_cfg) for k in layer_kinds] if mixed else None,
    )
