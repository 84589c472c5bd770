"""Reading a sweep: every ``summary.json`` below a directory, validated into :class:`Run` records.

A run directory (at any depth) holds ``summary.json`` with at least the keys in
:data:`REQUIRED_KEYS`. Anything wrong with a file is reported as a :class:`SummaryError` that names
the file and the key, so a broken run in a sweep of hundreds is found at once. A loss may be null
(a run without validation has no final_val_loss); it is an error only when that loss is the metric
being analysed. The optional ``exit_code`` (written by the trainer) marks runs that stopped early; the
optional ``downstream`` ({task: {metric: value}}, written by ``vffn-eval --checkpoint``) holds zero-shot scores.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# key -> kind of value it must hold
REQUIRED_KEYS: dict[str, str] = {
    "variant": "str",
    "model": "str",
    "params_total": "positive",
    "params_non_embedding": "positive",
    "flops_per_token_train": "positive",
    "flops_per_token_eval": "positive",
    "tokens": "positive",
    "steps": "positive",
    "final_train_loss": "loss",
    "final_val_loss": "loss",
    "wall_time_s": "nonnegative",
}
METRICS = ("final_val_loss", "final_train_loss")


class SummaryError(ValueError):
    """A sweep directory without summaries, or a summary that is unreadable or incomplete."""


@dataclass(frozen=True)
class Run:
    path: Path
    variant: str
    model: str
    params_total: float
    params_non_embedding: float
    flops_per_token_train: float
    flops_per_token_eval: float
    tokens: float
    steps: float
    final_train_loss: float
    final_val_loss: float  # NaN when the summary has null
    wall_time_s: float
    exit_code: int | None = None
    downstream: dict | None = None  # {task: {metric: value}} from vffn-eval

    @property
    def complete(self) -> bool:
        """False when the trainer recorded a non-zero exit (e.g. 3: stopped to be requeued)."""
        return not self.exit_code

    @property
    def compute(self) -> float:
        """Training compute C = FLOPs per training token (forward + backward) x tokens seen."""
        return self.flops_per_token_train * self.tokens

    def loss(self, metric: str) -> float:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        return getattr(self, metric)


def _check_value(path: Path, key: str, kind: str, value: object) -> object:
    def bad(why: str) -> SummaryError:
        return SummaryError(f"{path}: key {key!r} {why} (got {value!r})")

    if kind == "loss" and value is None:
        return float("nan")
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise bad("must be a non-empty string")
        return value
    # bool is an int subclass in Python; a true/false here is certainly a bug upstream
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad("must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise bad("must be finite")
    if kind == "positive" and value <= 0:
        raise bad("must be > 0")
    if kind == "nonnegative" and value < 0:
        raise bad("must be >= 0")
    if kind == "loss" and value <= 0:
        raise bad("must be a positive loss")
    return value


def load_run(path: Path) -> Run:
    """Parse and validate one summary.json."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SummaryError(f"{path}: not readable as JSON: {e}") from e
    if not isinstance(data, dict):
        raise SummaryError(f"{path}: expected a JSON object, got {type(data).__name__}")
    fields = {}
    for key, kind in REQUIRED_KEYS.items():
        if key not in data:
            raise SummaryError(f"{path}: missing key {key!r}")
        fields[key] = _check_value(path, key, kind, data[key])
    code = data.get("exit_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise SummaryError(f"{path}: key 'exit_code' must be an integer or null (got {code!r})")
    return Run(path=path, exit_code=code, downstream=_check_downstream(path, data.get("downstream")), **fields)


def _check_downstream(path: Path, value: object) -> dict | None:
    """None, or {task: {metric: finite number}}."""
    if value is None:
        return None
    ok = isinstance(value, dict) and all(
        isinstance(task, str) and isinstance(scores, dict) and all(
            isinstance(name, str) and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for name, v in scores.items())
        for task, scores in value.items())
    if not ok:
        raise SummaryError(f"{path}: key 'downstream' must map task -> {{metric: finite number}} (got {value!r})")
    return value


def load_runs(sweep_dir: str | Path, metric: str | None = None) -> list[Run]:
    """All runs below ``sweep_dir`` (any depth), sorted by path. Raises SummaryError when the
    directory does not exist, holds no summary.json, any summary is malformed, or (with ``metric``)
    a run has no value for that metric."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise SummaryError(f"sweep directory {root} does not exist or is not a directory")
    paths = sorted(root.rglob("summary.json"))
    if not paths:
        raise SummaryError(f"no summary.json found anywhere below {root}")
    runs = [load_run(p) for p in paths]
    if metric is not None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        for r in runs:
            if math.isnan(r.loss(metric)):
                raise SummaryError(
                    f"{r.path}: key {metric!r} is null; analyse another metric or remove the run"
                )
    return runs
