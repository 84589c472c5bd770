"""``build_dataloader``: micro-batches for one data-parallel rank, resumable at any sample.

The contract, which makes resume exact whatever the batch sizes:

* the global sample order is the dataset order 0, 1, 2, ... (the dataset itself is already shuffled,
  deterministically, by megatron-core), starting at ``consumed_samples``;
* each global batch is the next ``global_batch_size`` consecutive samples; data-parallel rank r takes the
  contiguous share ``[r * gbs / dp, (r + 1) * gbs / dp)`` of it and yields it in micro-batches of
  ``micro_batch_size``, in order;
* so after N samples have been consumed, with any global batch size, a loader built with
  ``consumed_samples=N`` continues at sample N.

Training stops before a global batch that would run past the end of the dataset (all ranks at the same
point). With ``cycle=True`` (validation) indices wrap around the dataset and iteration never ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader


class MicroBatchSampler:
    """Yields the dataset indices of each micro-batch of one data-parallel rank (see the module docstring)."""

    def __init__(self, total_samples: int, *, consumed_samples: int, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int, cycle: bool = False):
        if total_samples <= 0:
            raise ValueError(f"the dataset is empty (total_samples={total_samples})")
        if micro_batch_size <= 0 or global_batch_size <= 0 or dp_size <= 0:
            raise ValueError("micro_batch_size, global_batch_size and dp_size must be positive")
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of micro_batch_size "
                             f"{micro_batch_size} x dp_size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        if not cycle and consumed_samples > total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} is past the end of the dataset ({total_samples})")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.cycle = cycle
        self.per_rank = global_batch_size // dp_size

    def __iter__(self) -> Iterator[list[int]]:
        start = self.consumed_samples
        while self.cycle or start + self.global_batch_size <= self.total_samples:
            first = start + self.dp_rank * self.per_rank
            for m in range(0, self.per_rank, self.micro_batch_size):
                idx = range(first + m, first + m + self.micro_batch_size)
                yield [i % self.total_samples for i in idx] if self.cycle else list(idx)
            start += self.global_batch_size

    def __len__(self) -> int:
        if self.cycle:
            raise TypeError("a cycling sampler has no length")
        global_batches = (self.total_samples - self.consumed_samples) // self.global_batch_size
        return global_batches * (self.per_rank // self.micro_batch_size)


class MicroBatchIterator:
    """An iterator of micro-batch dicts; ``sampler`` and ``loader`` are kept for inspection."""

    def __init__(self, loader: DataLoader, sampler: MicroBatchSampler):
        self.loader = loader
        self.sampler = sampler
        self._it = iter(loader)

    def __iter__(self) -> MicroBatchIterator:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return next(self._it)


def build_dataloader(dataset, *, consumed_samples: int, micro_batch_size: int, global_batch_size: int,
                     dp_rank: int, dp_size: int, num_workers: int = 0, cycle: bool = False) -> MicroBatchIterator:
    """An iterator over this rank's micro-batches of ``dataset`` (dicts of batched tensors), starting at
    global sample ``consumed_samples``. ``num_workers`` DataLoader worker processes read ahead; the order is
    the same for any number of workers."""
    sampler = MicroBatchSampler(len(dataset), consumed_samples=consumed_samples, micro_batch_size=micro_batch_size,
                                global_batch_size=global_batch_size, dp_rank=dp_rank, dp_size=dp_size, cycle=cycle)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=False,
                        persistent_workers=num_workers > 0)
    return MicroBatchIterator(loader, sampler)
