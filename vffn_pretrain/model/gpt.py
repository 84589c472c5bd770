"""Build the megatron-core GPT model (one chunk per virtual pipeline stage) from validated configs."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from vffn_pretrain.model.backend import select_backend
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import build_ffn_slot
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.ffn.registry import transformer_config_overrides
from vffn_pretrain.model.init import init_layout_invariant
from vffn_pretrain.model.specs import gpt_block_spec
from vffn_pretrain.parallel.config import ParallelConfig


@dataclass
class RecomputeConfig:
    """megatron-core activation recompute: granularity None | "full" | "selective"."""

    granularity: str | None = None
    method: str | None = "uniform"  # full only: uniform | block
    num_layers: int | None = 1
    modules: tuple[str, ...] = ("core_attn",)  # selective only


def truncated_normal_init(std: float):
    """OLMo's init (docs/method.md §8): N(0, std) truncated at +-3 std, for every linear and the embeddings."""
    return functools.partial(torch.nn.init.trunc_normal_, mean=0.0, std=std, a=-3 * std, b=3 * std)


def build_transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    params_dtype: torch.dtype = torch.float32,
    recompute: RecomputeConfig | None = None,
    use_cpu_initialization: bool | None = None,
    ffn: FFNConfig | None = None,
    gradient_accumulation_fusion: bool = False,
) -> TransformerConfig:
    """`ffn`: when given, its kind may add TransformerConfig fields (ffn registry's config-override hook).
    `gradient_accumulation_fusion`: see `build_model`'s `fused_wgrad`."""
    recompute = recompute or RecomputeConfig()
    bf16 = params_dtype == torch.bfloat16
    if use_cpu_initialization is None:
        use_cpu_initialization = not torch.cuda.is_available()
    init = truncated_normal_init(model.init_std)
    full = recompute.granularity == "full"
    extra = {}
    if ffn is not None:
        for kind in dict.fromkeys(ffn.layer_kinds(model.num_layers)):
            extra.update(transformer_config_overrides(ffn.for_kind(kind), model, parallel))
        if ffn.is_mixed(model.num_layers):
            # Layers differ in their parameters, so the checkpoint keys every layer on its own
            # (decoder.layers.<global index>.*) rather than stacking all layers into one tensor per name.
            extra["hetereogenous_dist_checkpoint"] = True
    return TransformerConfig(
        **extra,
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.hidden_size // model.num_attention_heads,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=gradient_accumulation_fusion,
        init_method=init,
        output_layer_init_method=init,
        init_method_std=model.init_std,
        use_cpu_initialization=use_cpu_initialization,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=bf16,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.effective_vpp,
        sequence_parallel=parallel.sp,
        expert_model_parallel_size=parallel.ep,
        pipeline_model_parallel_layout=parallel.pipeline_layout,
        # With VPP and PP=2, prev and next rank are the same peer and batched p2p mis-orders the sends
        # (docs/cpu.md gotcha 9): silently wrong gradients. Unbatched p2p is correct everywhere.
        batch_p2p_comm=parallel.effective_vpp is None,
        # Which code path of the interleaved schedule runs (the pipeline planner models the one chosen here).
        overlap_p2p_comm=parallel.p2p_overlap,
        recompute_granularity=recompute.granularity,
        recompute_method=recompute.method if full else None,
        recompute_num_layers=recompute.num_layers if full else None,
        recompute_modules=list(recompute.modules) if recompute.granularity == "selective" else None,
        cross_entropy_loss_fusion=False,
        # Per-token loss over the global batch: gradients do not depend on the micro-batch / DP split.
        calculate_per_token_loss=True,
    )


def build_model(
    model: ModelConfig,
    ffn: FFNConfig,
    parallel: ParallelConfig,
    *,
    params_dtype: torch.dtype = torch.float32,
    recompute: RecomputeConfig | None = None,
    backend: str = "auto",
    init_seed: int | None = None,
    fused_wgrad: bool = False,
) -> list[GPTModel]:
    """The GPT chunks this rank holds (one per virtual pipeline stage), on this rank's device, not DDP-wrapped.

    Call after `setup_model_parallel(parallel)` and `seed_all(seed)`. With `init_seed`, every parameter gets
    the layout-invariant initialisation of `model.init` (the same model at any TP/PP/VPP layout).
    `fused_wgrad`: the chunks will be wrapped in megatron DDP (which gives each parameter an fp32 `main_grad`).
    On the transformer-engine backend their linears then add each weight gradient straight into main_grad
    (megatron's gradient_accumulation_fusion): the shared FFN's L_max loop gradients of a micro-batch are summed
    in fp32, not in bf16 by autograd first, and no separate wgrad tensor is kept. The local backend would need
    apex for it, so it is off there.
    """
    tp = ps.get_tensor_model_parallel_world_size()
    chosen = select_backend(backend)
    config = build_transformer_config(model, parallel, params_dtype=params_dtype, recompute=recompute, ffn=ffn,
                                      gradient_accumulation_fusion=fused_wgrad and chosen.name == "te")
    kinds = ffn.layer_kinds(model.num_layers)
    slots = {kind: build_ffn_slot(kind, ffn.for_kind(kind), chosen) for kind in dict.fromkeys(kinds)}
    slot = slots[kinds[0]] if len(slots) == 1 else [slots[kind] for kind in kinds]
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        gpt = GPTModel(
            config=config,
            transformer_layer_spec=gpt_block_spec(config, chosen, slot, stage),
            vocab_size=model.padded_vocab_size(tp),
            max_sequence_length=model.max_position_embeddings,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=model.tied_embeddings,
            position_embedding_type="rope",
            rotary_base=model.rotary_base,
            vp_stage=stage,
        )
        if torch.cuda.is_available():
            gpt.cuda(torch.cuda.current_device())
        chunks.append(gpt)
    if init_seed is not None:
        init_layout_invariant(chunks, init_seed, model.init_std)
    return chunks
