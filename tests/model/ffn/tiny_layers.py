"""Helpers shared by the FFN tests: building one FFN module at any TP/SP layout, and gathering its weights and
gradients into the global (TP=1) layout in float64 for the reference."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLPSubmodules

from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.ffn.versatile import VersatileFFN
from vffn_pretrain.model.gpt import build_transformer_config
from vffn_pretrain.model.norm import RMSNorm
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all, setup_model_parallel
from vffn_pretrain.testing.ffn_reference import RefWeights

SEED = 1234
D, D_FF = 32, 128
LAYER = 3  # a global layer number != 1, so the noise key is exercised
HEAD_SCALE = 40.0  # router / loop-head weights are scaled up so routing is decided by the weights, not ties


def module_config(tp: int = 1, sp: bool = False, d: int = D, d_ff: int = D_FF, dtype=torch.float32):
    model = ModelConfig(num_layers=1, hidden_size=d, ffn_hidden_size=d_ff, num_attention_heads=4, vocab_size=128)
    return build_transformer_config(model, ParallelConfig(tp=tp, sp=sp), params_dtype=dtype)


def make_ffn(kind: str, tp: int = 1, sp: bool = False, *, setup: bool = True, d: int = D, d_ff: int = D_FF,
             dtype=torch.float32, **ffn_kw) -> VersatileFFN:
    """A VersatileFFN-family module on this rank (sets up model parallelism unless setup=False)."""
    if setup:
        setup_model_parallel(ParallelConfig(tp=tp, sp=sp))
    seed_all(SEED)
    config = module_config(tp, sp, d, d_ff, dtype)
    ffn_cfg = FFNConfig(kind=kind, **ffn_kw)
    mod = VersatileFFN(config, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
                       ffn_cfg=ffn_cfg, norm=RMSNorm)
    mod.set_layer_number(LAYER)
    with torch.no_grad():
        for name in ("router", "loop_head"):
            if hasattr(mod, name):
                getattr(mod, name).weight.mul_(HEAD_SCALE)
        mod.norm.weight.copy_(1 + 0.1 * torch.randn(d, generator=torch.Generator().manual_seed(7)))
    return mod


def _tp_gather(t: torch.Tensor, dim: int) -> list[torch.Tensor]:
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return [t]
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
    return parts


def global_fc1(local: torch.Tensor) -> torch.Tensor:
    """Per-rank [gate_r ; up_r] shards -> the global [gate ; up]."""
    parts = _tp_gather(local, 0)
    gates = [p.chunk(2, 0)[0] for p in parts]
    ups = [p.chunk(2, 0)[1] for p in parts]
    return torch.cat(gates + ups, 0)


def global_fc2(local: torch.Tensor) -> torch.Tensor:
    return torch.cat(_tp_gather(local, 1), 1)


def ref_weights(mod: VersatileFFN) -> RefWeights:
    """The module's weights in the global layout, float64, leaf tensors requiring grad."""

    def leaf(t):
        return None if t is None else t.detach().to(torch.float64).clone().requires_grad_(True)

    return RefWeights(
        w1=leaf(global_fc1(mod.linear_fc1.weight.detach())),
        w2=leaf(global_fc2(mod.linear_fc2.weight.detach())),
        norm=leaf(mod.norm.weight),
        router=leaf(mod.router.weight) if hasattr(mod, "router") else None,
        loop_head=leaf(mod.loop_head.weight) if hasattr(mod, "loop_head") else None,
        eps=mod.config.layernorm_epsilon,
    )


def module_grads(mod: VersatileFFN) -> dict[str, torch.Tensor]:
    """Global float64 gradients. Under SP the replicated weights' grads are summed over TP first, as megatron's
    finalize_model_grads does for parameters marked `sequence_parallel`."""
    sp = mod.config.sequence_parallel and ps.get_tensor_model_parallel_world_size() > 1
    out = {}
    for name in ("norm", "router", "loop_head"):
        if hasattr(mod, name):
            g = getattr(mod, name).weight.grad.detach().clone()
            if sp:
                dist.all_reduce(g, group=ps.get_tensor_model_parallel_group())
            out[name] = g.double()
    out["w1"] = global_fc1(mod.linear_fc1.weight.grad).double()
    out["w2"] = global_fc2(mod.linear_fc2.weight.grad).double()
    return out


def seq_gather(t: torch.Tensor) -> torch.Tensor:
    """Sequence shards [s/tp, ...] of every TP rank -> [s, ...]."""
    return torch.cat(_tp_gather(t, 0), 0)


def seq_shard(t: torch.Tensor) -> torch.Tensor:
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    return t.chunk(tp, 0)[rank].contiguous()


def max_err(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |b|) as floats."""
    return float((a.double() - b.double()).abs().max()), float(b.abs().max())
