"""Reading a study directory: ``study.json`` (the plan) and each run's ``summary.json`` / ``metrics.jsonl``.

Three losses per finished run:

* ``final_val_loss``: held-out loss in eval mode (argmax loop counts), the study's primary metric;
* ``final_val_loss_train_mode``: the same batches in train mode (loop counts sampled; ``train.eval_train_mode``);
* ``train_loss_end``: the training loss (train mode, on the training batches) averaged over the logged windows of
  the last 5% of the steps: what the paper reports ("final training loss").

Adaptive kinds log, at every evaluation, the histogram of predicted loop counts over the validation tokens;
the trainer's summary keeps the last one as ``eval_loop_mix`` (fractions for 1..L_max loops). From it:

* mean loops = sum_l l * p_l;
* width fraction (VersatileFFN only) = 1 - p_{L_max}: tokens at L_max have lambda = 0 and skip the width
  path at inference (docs/method.md §5), every other token takes it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from vffn_pretrain.model.kinds import KINDS


class StudyReadError(ValueError):
    """A directory that is not a study, or a run file that cannot be read."""


@dataclass
class RunResult:
    name: str
    phase: str
    variant: str
    seed: int
    finished: bool
    kind: str | None = None
    steps: int = 0
    final_val_loss: float = math.nan
    final_val_ppl: float = math.nan
    final_val_loss_train_mode: float | None = None
    train_loss_end: float | None = None
    mean_loops: float | None = None
    width_fraction: float | None = None
    flops_train: float | None = None
    flops_eval: float | None = None
    wall_time_s: float | None = None
    tokens: int | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val_loss)

    @property
    def start_val_loss(self) -> float | None:
        """The validation loss before the first step (train.eval_at_start): for a continued run, the converted
        model's starting loss. None when the run has no step-0 evaluation."""
        return self.curve[0][1] if self.curve and self.curve[0][0] == 0 else None


def loop_stats(kind_name: str | None, loop_mix: list[float] | None) -> tuple[float | None, float | None]:
    """(mean loops, width fraction) at evaluation for the adaptive kinds; (None, None) for the others."""
    kind = KINDS.get(kind_name)
    if kind is None or not kind.adaptive_depth or not loop_mix:
        return None, None
    total = sum(loop_mix)
    p = [x / total for x in loop_mix]
    mean = sum((i + 1) * x for i, x in enumerate(p))
    return mean, (1.0 - p[-1] if kind.width_path else None)


def _number(path, key: str, value, *, positive: bool = False) -> float:
    """A finite number (positive with `positive`), or StudyReadError naming the file and key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or (positive and value <= 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise StudyReadError(f"{path}: key {key!r} must be {kind} (got {value!r})")
    return float(value)


def _optional_number(path, key: str, record: dict) -> float | None:
    value = record.get(key)
    return None if value is None else _number(path, key, value)


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) of every record of a metrics.jsonl, `where` its file and line. A line cut by a crash (not
    JSON) is skipped; no file: no records."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(rec, dict):
                    out.append((f"{path}:{lineno}", rec))
    except OSError:
        return []
    return out


def _curve(records: list[tuple[str, dict]], key: str = "val_loss") -> list[tuple[int, float]]:
    """(step, value) of every record with `key`; a resumed run may repeat records after its last checkpoint:
    the last value of each step is kept. A record with a wrong step or value is a StudyReadError naming the
    file, line and key."""
    out = []
    for where, rec in records:
        if rec.get(key) is None:
            continue
        step = rec.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise StudyReadError(f"{where}: key 'step' must be a step number (got {step!r})")
        out.append((step, _number(where, key, rec[key])))
    return sorted(dict(out).items())


def train_loss_end(records: list[tuple[str, dict]], steps: int) -> float | None:
    """Mean of the logged training-loss windows (`loss_avg`) that end in the last 5% of `steps` (at least the
    last window)."""
    windows = _curve(records, "loss_avg")
    if not windows:
        return None
    tail = [v for s, v in windows if s > 0.95 * steps] or [windows[-1][1]]
    return sum(tail) / len(tail)


def _group_kind(group: str) -> str | None:
    from vffn_pretrain.study.config import group_kind

    try:
        return group_kind(group)
    except OSError:
        return None


# study.json: each planned run's keys and the types they must have.
RUN_KEYS = {"name": str, "phase": str, "variant": str, "seed": int, "steps": int, "run_dir": str}


def run_dir_of(study_dir: Path, record: Path, index: int, name: str) -> Path:
    """Where run `name` of a study lives: ``study_dir / name`` (the layout of plan.py), wherever the study was
    run: a copied or moved study directory is read where it is now, never at the path its record names. A
    name that would leave the study directory is refused (StudyReadError naming the key)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or any(part in ("..", ".") for part in parts):
        raise StudyReadError(f"{record}: key 'runs[{index}].name' must be a path inside the study directory "
                             f"(got {name!r})")
    return study_dir / name


def _planned_runs(path: Path, meta) -> list[dict]:
    """The `runs` of a study record, each checked (StudyReadError naming the file and key)."""
    runs = meta.get("runs") if isinstance(meta, dict) else None
    if not isinstance(runs, list):
        raise StudyReadError(f"{path}: not a study record (no 'runs' list)")
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise StudyReadError(f"{path}: key 'runs[{i}]' must be an object (got {run!r})")
        for key, kind in RUN_KEYS.items():
            value = run.get(key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise StudyReadError(f"{path}: key 'runs[{i}].{key}' must be {'an integer' if kind is int else 'a string'} "
                                     f"(got {value!r})")
    return runs


def _read_summary(path: Path, res: RunResult) -> None:
    """Fill `res` (its name, kind and steps set) from a run's summary.json when it says the run finished
    (StudyReadError naming the file and key for a value of the wrong kind)."""
    try:
        s = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StudyReadError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(s, dict):
        raise StudyReadError(f"{path}: expected a JSON object, got {type(s).__name__}")
    if not (s.get("exit_code") == 0 and s.get("steps") == res.steps and s.get("final_val_loss") is not None):
        return
    res.finished = True
    res.final_val_loss = _number(path, "final_val_loss", s["final_val_loss"], positive=True)
    ppl = _optional_number(path, "final_val_ppl", s)
    res.final_val_ppl = ppl if ppl is not None else math.exp(min(res.final_val_loss, 50.0))
    mix = s.get("eval_loop_mix")
    if mix is not None and (not isinstance(mix, list) or not mix
                            or any(_number(path, "eval_loop_mix", x) < 0 for x in mix) or sum(mix) <= 0):
        raise StudyReadError(f"{path}: key 'eval_loop_mix' must be a list of fractions (got {mix!r})")
    res.mean_loops, res.width_fraction = loop_stats(res.kind, mix)
    res.final_val_loss_train_mode = _optional_number(path, "final_val_loss_train_mode", s)
    res.flops_train = _optional_number(path, "flops_per_token_train", s)
    res.flops_eval = _optional_number(path, "flops_per_token_eval", s)
    res.wall_time_s = _optional_number(path, "wall_time_s", s)
    tokens = _optional_number(path, "tokens", s)
    res.tokens = None if tokens is None else int(tokens)


def study_inputs(study_dir: str | Path) -> list[Path]:
    """The files `read_study` reads (for checking that a report's output does not overlap them)."""
    study_dir = Path(study_dir)
    paths = [study_dir / "study.json"]
    try:
        runs = _planned_runs(paths[0], json.loads(paths[0].read_text()))
        dirs = [run_dir_of(study_dir, paths[0], i, r["name"]) for i, r in enumerate(runs)]
    except (OSError, ValueError, StudyReadError):
        return paths
    return paths + [d / name for d in dirs for name in ("summary.json", "metrics.jsonl")]


def read_study(study_dir: str | Path) -> tuple[dict, list[RunResult]]:
    """The plan record and one :class:`RunResult` per planned run (``finished=False`` when not done)."""
    study_dir = Path(study_dir)
    path = study_dir / "study.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyReadError(f"{study_dir}: not a study directory (no study.json; made by `vffn-study run`)") \
            from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StudyReadError(f"{path}: not a study record (not readable as JSON: {e})") from None
    results = []
    for i, r in enumerate(_planned_runs(path, meta)):
        run_dir = run_dir_of(study_dir, path, i, r["name"])
        # Studies recorded before variants could be derived have no "kind": the variant is an ffn group there.
        kind = r.get("kind") or _group_kind(r["variant"])
        res = RunResult(name=r["name"], phase=r["phase"], variant=r["variant"], seed=r["seed"], finished=False,
                        kind=kind, steps=r["steps"])
        _read_summary(run_dir / "summary.json", res)
        records = _records(run_dir / "metrics.jsonl")
        res.curve = _curve(records)
        if res.finished:
            res.train_loss_end = train_loss_end(records, res.steps)
        results.append(res)
    return meta, results
