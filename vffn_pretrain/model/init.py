"""Layout-invariant initialisation: the same seed gives the same model at any TP / PP / VPP / EP layout.

megatron-core initialises each rank's shards from that rank's RNG stream, so a PP=2 model differs from a PP=1
one with the same seed. Here every parameter is drawn as its whole (global) tensor from a generator keyed by
the run seed and the parameter's global checkpoint key, and each rank keeps its own slice (the slice the
distributed checkpoint would give it). Rule (docs/method.md §8): norm scales 1, other 1-D tensors 0, every matrix
N(0, std) truncated at +-3 std.
"""

from __future__ import annotations

import zlib

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from vffn_pretrain.model.noise import mix


def _global_init(key: str, shape: tuple[int, ...], seed: int, std: float, device) -> torch.Tensor:
    if key.endswith("norm.weight"):
        return torch.ones(shape, device=device)
    if len(shape) == 1:
        return torch.zeros(shape, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(mix(seed, zlib.crc32(key.encode())))
    out = torch.empty(shape, device=device)
    return torch.nn.init.trunc_normal_(out, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=gen)


@torch.no_grad()
def _fill(sh: ShardedTensor, seed: int, std: float) -> None:
    if sh.data is None or not sh.data.is_floating_point() or sh.flattened_range is not None:
        return
    full = _global_init(sh.key, tuple(sh.global_shape), seed, std, sh.data.device)
    local_shape = (1,) * sh.prepend_axis_num + tuple(sh.local_shape)
    index = tuple(slice(off, off + size) for off, size in zip(sh.global_offset, local_shape))
    sh.data.copy_(full[index].reshape(sh.data.shape).to(sh.data.dtype))


@torch.no_grad()
def init_layout_invariant(chunks: list, seed: int, std: float) -> None:
    """Overwrite every parameter of the GPT `chunks` (not DDP-wrapped) with its layout-invariant init."""
    for chunk in chunks:
        for item in nested_values(chunk.sharded_state_dict()):
            if isinstance(item, ShardedTensorFactory):
                for sub in item.build_fn(item.key, item.data, item.replica_id, None):
                    if isinstance(sub, ShardedTensor):
                        _fill(sub, seed, std)
            elif isinstance(item, ShardedTensor):
                _fill(item, seed, std)
