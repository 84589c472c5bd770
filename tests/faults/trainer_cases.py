"""Trainer runs with a fault injected, for a RankPool (module-level functions: the pool imports them)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from tests.training import trainer_runs as cases


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def train_collecting_warnings(overrides: list[str]) -> dict:
    """cases.train, plus the warnings logged by vffn_pretrain and the ConfigError raised, if any."""
    from vffn_pretrain.config.errors import ConfigError

    handler = _Collect()
    logging.getLogger("vffn_pretrain").addHandler(handler)
    try:
        out = cases.train(overrides)
    except ConfigError as e:
        out = {"error": str(e)}
    finally:
        logging.getLogger("vffn_pretrain").removeHandler(handler)
        _reset_parallel_state()
    out["warnings"] = handler.lines
    return out


def _reset_parallel_state() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()


def train_with_failing_eval(overrides: list[str], faults: dict | None = None) -> dict:
    """The first evaluation raises: the checkpoint of that step must exist all the same. `faults`: see
    `injected`."""
    from vffn_pretrain.training.trainer import Trainer

    def broken(self):
        raise RuntimeError("evaluation exploded")

    original = Trainer.evaluate
    Trainer.evaluate = broken
    try:
        with injected(faults):
            cases.train(overrides)
        raised = None
    except RuntimeError as e:
        raised = str(e)
    finally:
        Trainer.evaluate = original
        _reset_parallel_state()
    run_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")))
    return {"raised": raised, "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))}


def train_with_full_disk(overrides: list[str], step: int) -> dict:
    """The save of `step` fails with ENOSPC after part of it is written."""
    from vffn_pretrain.training.faults import FAULTS

    FAULTS.enospc_in_save = step
    try:
        return cases.train(overrides)
    finally:
        FAULTS.enospc_in_save = None
        _reset_parallel_state()



@contextmanager
def injected(faults: dict | None):
    """The `faults.FAULTS` attributes in `faults` set meanwhile (e.g. {"slow_write": {2: 1.0}})."""
    from vffn_pretrain.training.faults import FAULTS

    faults = faults or {}
    saved = {name: getattr(FAULTS, name) for name in faults}
    for name, value in faults.items():
        setattr(FAULTS, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(FAULTS, name, value)


def train_with_faults(overrides: list[str], faults: dict) -> dict:
    """cases.train with `faults` injected (see `injected`)."""
    with injected(faults):
        try:
            return cases.train(overrides)
        finally:
            _reset_parallel_state()
