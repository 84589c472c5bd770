"""run_dir/metrics.jsonl: one JSON object per logged step and per evaluation, appended and flushed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vffn_pretrain.training.callbacks.base import Callback


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class MetricsFile(Callback):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    def on_log(self, record):
        self._append(record)

    def on_eval(self, record):
        self._append(record)
