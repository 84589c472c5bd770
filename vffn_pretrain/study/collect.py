"""Reading a study directory: ``study.json`` (the plan) and each run's ``summary.json`` / ``metrics.jsonl``.

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
    final_val_loss: float = math.nan
    final_val_ppl: float = math.nan
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


def loop_stats(variant: str, loop_mix: list[float] | None) -> tuple[float | None, float | None]:
    """(mean loops, width fraction) at evaluation for the adaptive kinds; (None, None) for the others. A variant
    is an `ffn=` config name: an FFN kind, or a kind with settings such as kloop4."""
    kind = KINDS.get(variant)
    if kind is None or not kind.adaptive_depth or not loop_mix:
        return None, None
    total = sum(loop_mix)
    p = [x / total for x in loop_mix]
    mean = sum((i + 1) * x for i, x in enumerate(p))
    return mean, (1.0 - p[-1] if kind.width_path else None)


def _curve(path: Path) -> list[tuple[int, float]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if rec.get("val_loss") is not None:
                    out.append((int(rec["step"]), float(rec["val_loss"])))
    except OSError:
        return []
    # A resumed run may repeat evaluations after its last checkpoint: keep the last value of each step.
    return sorted(dict(out).items())


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
        res = RunResult(name=r["name"], phase=r["phase"], variant=r["variant"], seed=int(r["seed"]),
                        finished=False)
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
            res.mean_loops, res.width_fraction = loop_stats(r["variant"], s.get("eval_loop_mix"))
            res.flops_train = s.get("flops_per_token_train")
            res.flops_eval = s.get("flops_per_token_eval")
            res.wall_time_s = s.get("wall_time_s")
            res.tokens = s.get("tokens")
        res.curve = _curve(run_dir / "metrics.jsonl")
        results.append(res)
    return meta, results
