"""run_dir/metrics.jsonl: one JSON object per logged step, per evaluation and per checkpoint saved (`checkpoint`,
`checkpoint_blocking_s`, `checkpoint_write_s`), appended and flushed.

A resumed run first drops the records of the steps after its checkpoint (the crashed process logged them, the
resumed one logs them again), so a reader sees each step once: the records of the run that was kept.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from vffn_pretrain.training.callbacks.base import Callback


def records(path: str | Path):
    """The records of a metrics.jsonl, in file order: each line that is a JSON object (a line cut off by a kill,
    or not an object, is skipped). Nothing when the file cannot be read."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
    except OSError:
        return


def json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


class MetricsFile(Callback):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def target(self) -> str:
        return str(self.path)

    def _append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    def on_train_start(self, info):
        self.drop_after(int(info.get("start_step", 0)))

    def drop_after(self, step: int) -> int:
        """Remove the records of steps after `step` (atomically); returns how many were removed."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        text = self.path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):  # the last record was cut off (kill -9 mid-write): not a record
            lines.pop()
            dropped += 1
        for line in lines:
            try:
                later = json.loads(line).get("step", 0) > step
            except (ValueError, AttributeError, TypeError):
                later = False  # not ours to judge: keep it
            if later:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        return dropped

    def on_log(self, record):
        self._append(record)

    def on_eval(self, record):
        self._append(record)

    def on_checkpoint(self, record):
        self._append(record)
