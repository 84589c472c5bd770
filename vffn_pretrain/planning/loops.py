"""Per-layer loop mixes for the cost model: from the trainer's metrics.jsonl, or uniform before training.

metrics.jsonl records written every `logging.stats_interval` carry `layers`: {layer_number: {"loop_hist":
[tokens that sampled 1..L_max loops], ...}} with 1-based global layer numbers. The latest such record is used.
Before any training the Gumbel temperature is tau0 (5 by default) and the loop head's logits are near zero, so
the sampled counts are close to uniform: that is the default.
"""

from __future__ import annotations

import json
from pathlib import Path


def normalise(hist: list[float]) -> list[float] | None:
    total = float(sum(hist))
    return [h / total for h in hist] if total > 0 else None


def latest_loop_mixes(metrics_path: str | Path, num_layers: int) -> tuple[list[list[float] | None], int | None]:
    """(mix per layer, step of the record used). A layer with no histogram (dense, or none logged) gets None,
    which the cost model reads as uniform for adaptive kinds. Lines that are not JSON (a run cut off mid-write)
    are skipped."""
    mixes: list[list[float] | None] = [None] * num_layers
    path = Path(metrics_path)
    if not path.exists():
        return mixes, None
    latest = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("layers"):
            latest = record
    if latest is None:
        return mixes, None
    for key, layer in latest["layers"].items():
        index = int(key) - 1
        if 0 <= index < num_layers and layer.get("loop_hist"):
            mixes[index] = normalise(layer["loop_hist"])
    return mixes, latest.get("step")
