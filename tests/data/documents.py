"""Small builders of test inputs shared by the data tests."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_jsonl(path: Path, records: list, key: str = "text") -> Path:
    """One JSON object per line; a str record becomes {key: record}, anything else is dumped as is."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({key: r} if isinstance(r, str) else r) + "\n")
    return path


def number_docs(n: int, *, seed: int = 0, vocab: int = 100, max_len: int = 40) -> list[str]:
    """Documents for the null tokenizer: space-separated ids below ``vocab - 1`` (the eod id is ``vocab - 1``)."""
    rng = random.Random(seed)
    return [" ".join(str(rng.randrange(vocab - 1)) for _ in range(rng.randint(1, max_len))) for _ in range(n)]


def read_docs(prefix: str) -> list[list[int]]:
    """Every document of an indexed dataset as a list of ids, read with megatron-core's IndexedDataset."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]
