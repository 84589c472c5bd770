"""Per-layer loop mixes for the cost model: from a checkpoint, the trainer's metrics.jsonl, or uniform before
training.

Every checkpoint directory holds `loop_stats.json` (written by the trainer with the checkpoint): {"step": int,
"pipeline_layout": the layout string the run had (null without a pipeline), "loop_hist": {layer_number:
[tokens that sampled 1..L_max loops]}} from the latest logging window before the save.

metrics.jsonl records written every `logging.stats_interval` carry `layers`: {layer_number: {"loop_hist":
[tokens that sampled 1..L_max loops], ...}} with 1-based global layer numbers. The latest such record is used.
Before any training the Gumbel temperature is tau0 (5 by default) and the loop head's logits are near zero, so
the sampled counts are close to uniform: that is the default.

Both readers check what they use: a regular file of bounded size, JSON objects where objects belong, layer
numbers of this model, and for each adaptive layer a histogram of `max_loops` finite non-negative counts (a run
with another ffn.max_loops, or another model, is refused rather than planned for). Problems raise
LoopStatsError, whose message names the file (and line).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from vffn_pretrain.planning.files import regular_file

LOOP_STATS_FILE = "loop_stats.json"
MAX_STATS_BYTES = 64 << 20  # a loop_stats.json holds one histogram per layer: kilobytes
MAX_METRICS_BYTES = 4 << 30  # a metrics.jsonl grows with the run; it is read line by line


class LoopStatsError(ValueError):
    """A loop-statistics file that cannot be used; the message names it."""


def normalise(hist: list[float]) -> list[float] | None:
    total = float(sum(hist))
    return [h / total for h in hist] if total > 0 else None


def _layer_number(key, num_layers: int, where: str) -> int:
    try:
        number = int(key)
    except (TypeError, ValueError):
        raise LoopStatsError(f"{where}: layer {key!r} is not a layer number") from None
    if not 1 <= number <= num_layers:
        raise LoopStatsError(f"{where}: layer {number} is outside this model's layers 1..{num_layers}")
    return number


def _mix(hist, expected: int | None, where: str) -> list[float] | None:
    """The loop mix of one histogram (None: no tokens counted). expected: the layer's max_loops (None: the layer
    does not adapt its depth, its histogram is not used)."""
    if expected is None:
        return None
    if not isinstance(hist, list) or not all(isinstance(h, (int, float)) and not isinstance(h, bool) for h in hist):
        raise LoopStatsError(f"{where}: loop_hist must be a list of numbers, got {hist!r:.80}")
    if not all(math.isfinite(h) and h >= 0 for h in hist):
        raise LoopStatsError(f"{where}: loop_hist counts must be finite and >= 0, got {hist!r:.80}")
    if len(hist) != expected:
        raise LoopStatsError(f"{where}: loop_hist has {len(hist)} bins, this model's ffn.max_loops is {expected} "
                             f"(statistics of another run?)")
    return normalise([float(h) for h in hist])


def _mixes(hists: dict, max_loops: list[int | None], where: str) -> list[list[float] | None]:
    """Per-layer mixes from {layer_number: histogram}; max_loops[i] is layer i+1's L_max (None: not adaptive)."""
    mixes: list[list[float] | None] = [None] * len(max_loops)
    for key, hist in hists.items():
        number = _layer_number(key, len(max_loops), where)
        mixes[number - 1] = _mix(hist, max_loops[number - 1], f"{where}, layer {number}")
    return mixes


def latest_loop_mixes(metrics_path: str | Path, max_loops: list[int | None], required: bool = False
                      ) -> tuple[list[list[float] | None], int | None]:
    """(mix per layer, step of the record used) from the latest record with per-layer statistics. A layer with
    no histogram (dense, or none logged) gets None, which the cost model reads as uniform for adaptive kinds.
    Lines that are not JSON (a run cut off mid-write) are skipped. Without such a record: uniform, or with
    `required` a LoopStatsError (a file given on purpose that holds no statistics is a mistake)."""
    try:
        path = regular_file(metrics_path, MAX_METRICS_BYTES)
        latest, line_no = None, 0
        with path.open(errors="replace") as f:
            for n, line in enumerate(f, 1):
                if '"layers"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("layers"):
                    latest, line_no = record, n
    except (OSError, ValueError) as e:
        raise LoopStatsError(str(e)) from None
    if latest is None:
        if required:
            raise LoopStatsError(f"{metrics_path} has no record with per-layer loop statistics "
                                 f"(the trainer writes them every logging.stats_interval steps)")
        return [None] * len(max_loops), None
    where = f"{metrics_path} line {line_no}"
    layers = latest["layers"]
    if not isinstance(layers, dict) or not all(isinstance(x, dict) for x in layers.values()):
        raise LoopStatsError(f"{where}: 'layers' must map layer numbers to objects")
    hists = {key: layer["loop_hist"] for key, layer in layers.items() if layer.get("loop_hist") is not None}
    step = latest.get("step")
    return _mixes(hists, max_loops, where), step if isinstance(step, int) else None


def write_loop_stats(checkpoint_dir: str | Path, step: int, pipeline_layout: str | None,
                     loop_hist: dict[str, list[float]]) -> None:
    """Write `loop_stats.json` into a checkpoint directory (atomically: a cut-off write leaves no file)."""
    path = Path(checkpoint_dir) / LOOP_STATS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"step": step, "pipeline_layout": pipeline_layout, "loop_hist": loop_hist}))
    os.replace(tmp, path)


def checkpoint_loop_stats(checkpoint_dir: str | Path, max_loops: list[int | None]) -> dict | None:
    """{"mixes": per layer (None where none was logged), "step", "pipeline_layout"} from a checkpoint's
    loop_stats.json; None when the checkpoint has none (older checkpoints); LoopStatsError when it is damaged or
    belongs to another model (layer numbers, ffn.max_loops)."""
    path = Path(checkpoint_dir) / LOOP_STATS_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = json.loads(regular_file(path, MAX_STATS_BYTES).read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise LoopStatsError(f"{path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("loop_hist"), dict):
        raise LoopStatsError(f"{path}: expected an object with a 'loop_hist' mapping")
    layout, step = data.get("pipeline_layout"), data.get("step")
    if layout is not None and not isinstance(layout, str):
        raise LoopStatsError(f"{path}: pipeline_layout must be a string or null, got {layout!r:.80}")
    return {"mixes": _mixes(data["loop_hist"], max_loops, str(path)), "step": step if isinstance(step, int) else None,
            "pipeline_layout": layout}
