"""The paper's MoE baseline (docs/method.md §9.4, §12 #18) on megatron-core's MoELayer.

The dense SwiGLU FFN stays as an always-on shared expert (width d_ff, keys `mlp.shared_experts.*`), plus N real
experts of width d_ff/N with top-k routing (softmax over the k selected logits, fp32 router, dropless). The
balance loss is this project's (balance.py: Switch form, statistics over the ranks holding different tokens,
token-weighted under per-token loss), not megatron's aux-loss types, so the baseline and VersatileFFN are
regularised identically; megatron's own aux loss is switched off. Expert parallelism is megatron's (parallel.ep;
all-to-all token dispatcher on GPU, all-gather otherwise). The layer keeps the standard pre-norm and residual of the transformer layer.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
from megatron.core.transformer.moe.router import TopKRouter

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.model.ffn.balance import attach_aux_loss, switch_balance
from vffn_pretrain.model.ffn.functional import router_logits
from vffn_pretrain.model.ffn.registry import FFNSlot, register_config_overrides, register_ffn
from vffn_pretrain.model.ffn.stats import FFNStats
from vffn_pretrain.model.ffn.versatile import in_backward_pass, token_group


class BalancedTopKRouter(TopKRouter):
    """megatron-core's top-k router plus this project's balance loss and per-layer statistics (`ffn_stats`)."""

    def __init__(self, config, pg_collection=None, *, ffn_cfg):
        super().__init__(config=config, pg_collection=pg_collection)
        self.ffn_cfg = ffn_cfg
        self.ffn_stats = FFNStats(1, config.num_moe_experts)

    def gating(self, input: torch.Tensor) -> torch.Tensor:
        """fp32 logits [s, b, N]. Replaces megatron's fused gating, whose no-transformer-engine branch in 0.16.1
        references an undefined `te_general_gemm`; the router is d x N, so the plain matmul costs nothing."""
        return router_logits(input, self.weight)

    def routing(self, logits: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """logits [s, b, N] fp32 (moe_router_dtype=fp32); padding_mask [s, b], True = padding.
        Returns megatron's (probs [T, N], routing_map [T, N] bool), probs carrying the balance loss."""
        probs, routing_map = super().routing(logits, padding_mask=padding_mask)
        cfg = self.ffn_cfg
        n = self.config.num_moe_experts
        flat = logits.reshape(-1, n)
        weight = None if padding_mask is None else (~padding_mask.reshape(-1).bool()).to(torch.float32)
        record = not in_backward_pass()
        grad = torch.is_grad_enabled() and self.training
        value, counts = None, None
        if self.training and cfg.balance_loss and cfg.balance_coeff > 0 and (grad or record):
            sp = bool(self.config.sequence_parallel) and self.tp_group.size() > 1
            # alpha / num_layers: the loss is averaged over layers (docs/method.md §12 #6), like VersatileFFN's
            terms = switch_balance(torch.softmax(flat.float(), dim=-1), routing_map, cfg.top_k,
                                   cfg.balance_coeff / self.config.num_layers, token_group(sp), weight)
            if grad:
                probs = attach_aux_loss(probs, terms.attach, self.config)
            value, counts = terms.value, terms.counts
        if record:
            if counts is None:
                assign = routing_map.to(torch.float32)
                counts = (assign if weight is None else assign * weight.unsqueeze(-1)).sum(0)
            index = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
            self.ffn_stats.add(loop_index=index, expert_counts=counts, balance=value, token_weight=weight)
        return probs, routing_map


@register_config_overrides("moe")
def moe_transformer_config(ffn_cfg, model_cfg, parallel_cfg) -> dict:
    """TransformerConfig fields of the MoE baseline; raises ConfigError for layouts it cannot run."""
    d_ff = model_cfg.ffn_hidden_size
    ffn_cfg.validate(d_ff, parallel_cfg.tp)
    if parallel_cfg.tp > 1 and not parallel_cfg.sp:
        raise ConfigError("parallel.sp", "megatron-core's MoE layer needs sequence parallelism when parallel.tp > 1")
    if ffn_cfg.num_experts % parallel_cfg.ep:
        raise ConfigError("parallel.ep", f"parallel.ep={parallel_cfg.ep} must divide ffn.num_experts="
                                         f"{ffn_cfg.num_experts}")
    return dict(
        num_moe_experts=ffn_cfg.num_experts,
        moe_router_topk=ffn_cfg.top_k,
        moe_ffn_hidden_size=d_ff // ffn_cfg.num_experts,
        moe_shared_expert_intermediate_size=d_ff,  # the dense FFN, always on
        moe_shared_expert_overlap=False,
        moe_router_load_balancing_type="none",  # balance loss: BalancedTopKRouter
        moe_aux_loss_coeff=0.0,
        moe_router_score_function="softmax",
        moe_router_pre_softmax=False,  # softmax over the top-k logits only (docs/method.md §3.3)
        moe_router_dtype="fp32",
        # all-to-all is megatron's choice for EP at scale, but its dispatcher needs a CUDA side stream; the
        # all-gather dispatcher computes the same result and also runs on gloo.
        moe_token_dispatcher_type="alltoall" if torch.cuda.is_available() else "allgather",
        moe_grouped_gemm=False,
        moe_permute_fusion=False,
    )


@register_ffn("moe")
def moe_slot(ffn_cfg, backend) -> FFNSlot:
    spec = get_moe_module_spec(use_te=backend.name == "te", num_experts=ffn_cfg.num_experts,
                               moe_grouped_gemm=False)
    spec.submodules.router = partial(BalancedTopKRouter, ffn_cfg=ffn_cfg)
    return FFNSlot(mlp=spec, pre_mlp_layernorm=backend.norm, mlp_bda=get_bias_dropout_add)
