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


def _records(path: Path) -> list[dict]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a crash
    except OSError:
        return []
    return out


def _curve(records: list[dict], key: str = "val_loss") -> list[tuple[int, float]]:
    """(step, value) of every record with `key`; a resumed run may repeat records after its last checkpoint:
    the last value of each step is kept."""
    return sorted({int(r["step"]): float(r[key]) for r in records if r.get(key) is not None}.items())


def train_loss_end(records: list[dict], steps: int) -> float | None:
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


def read_study(study_dir: str | Path) -> tuple[dict, list[RunResult]]:
    """The plan record and one :class:`RunResult` per planned run (``finished=False`` when not done)."""
    study_dir = Path(study_dir)
    path = study_dir / "study.json"
    try:
        meta = json.loads(path.read_text())
        runs = meta["runs"]
    except FileNotFoundError:
        raise StudyReadError(f"{study_dir}: not a study directory (no study.json; made by `vffn-study run`)") \
            from None
    except (ValueError, KeyError, TypeError):
        raise StudyReadError(f"{path}: not a study record (unreadable, or no 'runs')") from None
    results = []
    for r in runs:
        run_dir = Path(r["run_dir"])
        # Studies recorded before variants could be derived have no "kind": the variant is an ffn group there.
        kind = r.get("kind") or _group_kind(r["variant"])
        res = RunResult(name=r["name"], phase=r["phase"], variant=r["variant"], seed=int(r["seed"]),
                        finished=False, kind=kind, steps=int(r["steps"]))
        try:
            s = json.loads((run_dir / "summary.json").read_text())
        except FileNotFoundError:
            s = None
        except ValueError:
            raise StudyReadError(f"{run_dir / 'summary.json'}: not valid JSON") from None
        if s is not None and s.get("exit_code") == 0 and s.get("steps") == r["steps"] \
                and s.get("final_val_loss") is not None:
            res.finished = True
            res.final_val_loss = float(s["final_val_loss"])
            res.final_val_ppl = float(s.get("final_val_ppl") or math.exp(min(res.final_val_loss, 50.0)))
            res.mean_loops, res.width_fraction = loop_stats(kind, s.get("eval_loop_mix"))
            res.final_val_loss_train_mode = s.get("final_val_loss_train_mode")
            res.flops_train = s.get("flops_per_token_train")
            res.flops_eval = s.get("flops_per_token_eval")
            res.wall_time_s = s.get("wall_time_s")
            res.tokens = s.get("tokens")
        records = _records(run_dir / "metrics.jsonl")
        res.curve = _curve(records)
        if res.finished:
            res.train_loss_end = train_loss_end(records, res.steps)
        results.append(res)
    return meta, results
