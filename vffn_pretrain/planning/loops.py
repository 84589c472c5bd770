"""Per-layer loop mixes for the cost model: from a checkpoint, the trainer's metrics.jsonl, or uniform before
training.

Every checkpoint directory holds `loop_stats.json` (written by the trainer with the checkpoint): {"step": int,
"pipeline_layout": the layout string the run had (null without a pipeline), "loop_hist": {layer_number:
[tokens that sampled 1..L_max loops]}} from the latest logging window before the save.

metrics.jsonl records written every `logging.stats_interval` carry `layers`: {layer_number: {"loop_hist":
[tokens that sampled 1..L_max loops], ...}} with 1-based global layer numbers. The latest such record is used.
Before any training the Gumbel temperature is tau0 (5 by default) and the loop head's logits are near zero, so
the sampled counts are close to uniform: that is the default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOOP_STATS_FILE = "loop_stats.json"


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


def write_loop_stats(checkpoint_dir: str | Path, step: int, pipeline_layout: str | None,
                     loop_hist: dict[str, list[float]]) -> None:
    """Write `loop_stats.json` into a checkpoint directory (atomically: a cut-off write leaves no file)."""
    path = Path(checkpoint_dir) / LOOP_STATS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"step": step, "pipeline_layout": pipeline_layout, "loop_hist": loop_hist}))
    os.replace(tmp, path)


def checkpoint_loop_stats(checkpoint_dir: str | Path, num_layers: int) -> dict | None:
    """{"mixes": per layer (None where none was logged), "step", "pipeline_layout"} from a checkpoint's
    loop_stats.json; None when the checkpoint has none or it cannot be read (older checkpoints)."""
    try:
        data = json.loads((Path(checkpoint_dir) / LOOP_STATS_FILE).read_text())
        hists = data["loop_hist"]
        mixes: list[list[float] | None] = [None] * num_layers
        for key, hist in hists.items():
            index = int(key) - 1
            if 0 <= index < num_layers and hist:
                mixes[index] = normalise([float(h) for h in hist])
        return {"mixes": mixes, "step": data.get("step"), "pipeline_layout": data.get("pipeline_layout")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
