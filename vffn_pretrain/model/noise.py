"""Layout-invariant randomness for the Gumbel loop sampler.

The noise a token gets must not depend on how the run is parallelised: the same on every TP rank that holds
it, the same with or without sequence parallelism, and the same whether its micro-batch runs on DP rank 0 of 1
or DP rank 1 of 2, on pipeline stage 0 or 1. It must also replay exactly when megatron-core recomputes
activations.

So the trainer seeds torch's default generator once per micro-batch from (run seed, global step, global
micro-batch index), and each layer derives a private generator from that seed and its global layer number.
megatron-core's activation recompute saves and restores the default generator's state, and with it the seed
(`torch.initial_seed()`), so a recomputed layer draws the same noise.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """A 63-bit hash of integers (order matters), usable as a torch seed."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def seed_microbatch(run_seed: int, mb_key: tuple[int, int]) -> None:
    """Seed the default generator for the micro-batch `mb_key` = (global step, global micro-batch index)."""
    torch.manual_seed(mix(run_seed, *mb_key))


def gumbel_noise(shape: tuple[int, ...], layer_number: int, device: torch.device,
                 seq_dim: int = 0, seq_shard: tuple[int, int] | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise in fp32 for one layer of the current micro-batch.

    `shape` is the full (unsharded) shape. With `seq_shard=(rank, world)` the full tensor is drawn and this
    rank's contiguous slice along `seq_dim` is returned, so every token gets the noise it would get unsharded.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(mix(torch.initial_seed(), layer_number))
    u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
    g = -torch.log(-torch.log(u.clamp_min(1e-20)))
    if seq_shard is not None:
        rank, world = seq_shard
        g = g.chunk(world, dim=seq_dim)[rank]
    return g
