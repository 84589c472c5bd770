"""Test batches: synthetic global batches of random tokens, cut into a DP rank's micro-batches the way the
trainer's data loader cuts real ones (the trainer itself never uses these)."""

from __future__ import annotations

import torch


def split_global_batch(global_batch: dict[str, torch.Tensor], *, step: int, dp_rank: int, dp_size: int,
                       micro_batch_size: int, device: torch.device | None = None) -> list[dict]:
    """DP rank r takes rows [r*G/dp, (r+1)*G/dp) of the [G, s] global batch, in micro-batches of
    `micro_batch_size`. Each micro-batch gets `mb_key` = (step, index of the micro-batch in the global batch),
    which does not depend on dp_size, so Gumbel noise is the same for any DP layout."""
    gbs = global_batch["tokens"].shape[0]
    if gbs % (dp_size * micro_batch_size):
        raise ValueError(f"global batch {gbs} is not divisible by micro batch {micro_batch_size} x DP {dp_size}")
    per_rank = gbs // dp_size
    num_micro = per_rank // micro_batch_size
    out = []
    for m in range(num_micro):
        start = dp_rank * per_rank + m * micro_batch_size
        mb = {k: v[start:start + micro_batch_size] for k, v in global_batch.items()}
        if device is not None:
            mb = {k: v.to(device, non_blocking=True) for k, v in mb.items()}
        mb["mb_key"] = (step, dp_rank * num_micro + m)
        out.append(mb)
    return out


def synthetic_global_batch(seed: int, step: int, global_batch_size: int, seq_length: int,
                           vocab_size: int) -> dict[str, torch.Tensor]:
    """A reproducible [G, s] batch of random tokens (the same on every rank), labels shifted by one."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    data = torch.randint(0, vocab_size, (global_batch_size, seq_length + 1), generator=gen)
    return {
        "tokens": data[:, :-1].contiguous(),
        "labels": data[:, 1:].contiguous(),
        "loss_mask": torch.ones(global_batch_size, seq_length),
        "position_ids": torch.arange(seq_length).expand(global_batch_size, seq_length).contiguous(),
    }
