"""Functions run on every rank of a RankPool by tests/parallel/test_overlap.py and test_tp_replicated_heads.py
(module level, so they pickle): the tiny VersatileFFN GPT trained with megatron's overlap options, and at TP=2."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from tests.parallel.layout_runs import SEED, TINY, run_steps
from vffn_pretrain.model import noise
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.ffn.versatile import VersatileFFN
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all, setup_model_parallel
from vffn_pretrain.training import optim
from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp

VERSATILE = dict(kind="versatile", balance_loss=False)  # the router's gradient comes from the width path only


def build_versatile(parallel: ParallelConfig, bucket_size: int | None = None, max_steps: int = 8):
    setup_model_parallel(parallel)
    seed_all(SEED)
    chunks = build_model(ModelConfig(**TINY), FFNConfig(**VERSATILE), parallel, init_seed=SEED)
    state.set_training_step(chunks, 0, max_steps)
    ddp = wrap_ddp(chunks, parallel, bucket_size=bucket_size)
    return ddp, build_optimizer(ddp, OptimConfig(lr=3e-3, min_lr=3e-3), parallel)


class LoopsForcedOn:
    """While active, every token of the micro-batches whose key is in `keys` samples L_max loops on this rank
    (its Gumbel noise gets +1e4 on the last count): no token takes the width path there, so without the balance
    loss the router gets no gradient from that micro-batch."""

    def __init__(self, keys: set[tuple[int, int]]):
        self.keys, self.current = keys, None

    def __enter__(self):
        self._seed, self._noise = noise.seed_microbatch, VersatileFFN._noise

        def seed(seed_value, key):
            self.current = tuple(key)
            return self._seed(seed_value, key)

        def forced(mod, hidden):
            out = self._noise(mod, hidden)
            if self.current in self.keys:
                out = out.clone()
                out[..., -1] += 1e4
            return out

        noise.seed_microbatch, VersatileFFN._noise = seed, forced
        return self

    def __exit__(self, *exc):
        noise.seed_microbatch, VersatileFFN._noise = self._seed, self._noise


def overlap_case(overlap: bool, steps: int = 4) -> list[float]:
    """DP=2, distributed optimizer; with `overlap`: overlap_grad_reduce and overlap_param_gather, one parameter
    per bucket (so every head has a bucket of its own). On step 2 (0-based 1) every token of rank 1's last
    micro-batch samples L_max. Returns the losses."""
    parallel = ParallelConfig(distributed_optimizer=True, overlap_grad_reduce=overlap, overlap_param_gather=overlap)
    ddp, optimizer = build_versatile(parallel, bucket_size=1 if overlap else None)
    rank = ps.get_data_parallel_rank()
    per_rank = 8 // (2 * 2)  # global batch 8, micro-batch 2, DP 2
    last = (1, rank * per_rank + per_rank - 1)
    try:
        with LoopsForcedOn({last} if rank == 1 else set()):
            return run_steps(ddp, optimizer, range(steps))
    finally:
        ps.destroy_model_parallel()


def tp_heads_case(drift: bool, steps: int = 3) -> dict:
    """TP=2 (world 2): train, then compare the router and loop-head weights of the two TP ranks bitwise. With
    `drift`, TP rank 1's head gradients get one ulp added after megatron's DP reduction, as a DP reduction on its
    own communicator could give. Returns {"equal": bool, "max_diff": float}."""
    parallel = ParallelConfig(tp=2)
    ddp, optimizer = build_versatile(parallel)
    megatron_finalize = optim.finalize_model_grads

    def finalize_with_drift(model, *args, **kwargs):
        megatron_finalize(model, *args, **kwargs)
        if ps.get_tensor_model_parallel_rank() == 1:
            for chunk in model:
                for p in chunk.parameters():
                    if getattr(p, "tp_replicated", False):
                        p.main_grad.copy_(torch.nextafter(p.main_grad, torch.full_like(p.main_grad, float("inf"))))

    if drift:
        optim.finalize_model_grads = finalize_with_drift
    try:
        run_steps(ddp, optimizer, range(steps))
    finally:
        optim.finalize_model_grads = megatron_finalize
    heads = torch.cat([p.detach().reshape(-1) for chunk in ddp for p in chunk.module.parameters()
                       if getattr(p, "tp_replicated", False)])
    gathered = [torch.empty_like(heads) for _ in range(2)]
    dist.all_gather(gathered, heads, group=ps.get_tensor_model_parallel_group())
    ps.destroy_model_parallel()
    return {"equal": torch.equal(gathered[0], gathered[1]), "max_diff": float((gathered[0] - gathered[1]).abs().max()),
            "heads": heads.numel()}
