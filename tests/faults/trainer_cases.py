"""Trainer runs with a fault injected, for a RankPool (module-level functions: the pool imports them)."""

from __future__ import annotations

import contextlib
import io
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


# ------------------------------------------------------------------------------------------------ issue 23
def _run_dir(overrides: list[str]) -> Path:
    return Path(next(o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("run_dir=")))


def run_as_the_cli_does(overrides: list[str], *, nan_steps=(), patch: dict | None = None) -> dict:
    """`trainer.run` (set-up, fit, release) as vffn-pretrain runs it, on every rank of a pool. Returns the exit
    code (or the error a start-up stop or a bad config ends with), the warnings logged, the lines the trainer
    printed or said, the step reached and the summary. `patch` maps Trainer method names to (factory name,
    *args): a function of this module that returns a wrapper `wrapper(original, trainer, *args)` (by name: the
    pool pickles the arguments); `nan_steps` makes those steps' losses NaN (0: the evaluations)."""
    from vffn_pretrain.config.errors import ConfigError
    from vffn_pretrain.training import trainer as trainer_module
    from vffn_pretrain.training.errors import RunError
    from vffn_pretrain.training.faults import FAULTS
    from vffn_pretrain.training.signals import StoppedBeforeTraining

    handler = _Collect()
    logging.getLogger("vffn_pretrain").addHandler(handler)
    said: list[str] = []
    seen: dict = {}
    originals = {}
    wrappers = {"_print": lambda original, self, text: (said.append(text), original(self, text)),
                "_say": lambda original, self, text: (said.append(text), original(self, text)),
                "fit": lambda original, self: (seen.setdefault("trainer", self), original(self))[1],
                **{name: globals()[factory](*args) for name, (factory, *args) in (patch or {}).items()}}
    for name, wrapper in wrappers.items():
        original = originals[name] = getattr(trainer_module.Trainer, name)
        setattr(trainer_module.Trainer, name,
                lambda self, *a, _o=original, _w=wrapper: _w(_o, self, *a))
    FAULTS.nan_steps = frozenset(nan_steps)
    out: dict = {}
    stderr = io.StringIO()
    try:
        cfg = run_config(overrides)
        with contextlib.redirect_stderr(stderr):
            out["exit_code"] = trainer_module.run(cfg)
    except StoppedBeforeTraining as e:
        out.update(exit_code=e.exit_code, error=e.message())
    except ConfigError as e:
        out.update(exit_code=2, error=str(e), key=e.key)
    except RunError as e:
        out.update(exit_code=e.exit_code, error=str(e))
    finally:
        FAULTS.nan_steps = frozenset()
        for name, original in originals.items():
            setattr(trainer_module.Trainer, name, original)
        logging.getLogger("vffn_pretrain").removeHandler(handler)
        _reset_parallel_state()
    trainer = seen.get("trainer")
    out.update(warnings=handler.lines, said=said, stderr=stderr.getvalue(), step=trainer.step if trainer else None,
               summary=trainer.summary if trainer else None)
    return out


def run_config(overrides: list[str]):
    return cases.run_config(overrides)


def send_signal_first(signame: str):
    """A patch wrapper: the process gets `signame` as the method starts (a signal during that phase)."""
    import os
    import signal

    def wrapper(original, self, *args):
        os.kill(os.getpid(), getattr(signal, signame))
        return original(self, *args)

    return wrapper


def listing_without_the_newest_on_rank(rank: int):
    """A patch for CheckpointManager.complete_checkpoints: rank `rank` does not see the newest checkpoint (a stale
    NFS listing)."""
    def complete_checkpoints(self, _original=None):
        import torch.distributed as dist

        found = _original(self)
        return found[1:] if dist.get_rank() == rank else found

    return complete_checkpoints


def resume_with_stale_listing(overrides: list[str], stale_rank: int) -> dict:
    """Set up a resume where rank `stale_rank` lists checkpoint.dir without its newest checkpoint; the step each
    rank resumed."""
    from vffn_pretrain.training.checkpointing import CheckpointManager

    original = CheckpointManager.complete_checkpoints
    stale = listing_without_the_newest_on_rank(stale_rank)
    CheckpointManager.complete_checkpoints = lambda self: stale(self, _original=original)
    try:
        return run_as_the_cli_does(overrides)
    finally:
        CheckpointManager.complete_checkpoints = original


def metrics_to_a_full_disk_at(step: int):
    """A patch wrapper for log_step: from `step` on, metrics.jsonl is written to /dev/full (ENOSPC)."""
    def wrapper(original, self, result):
        if self.step >= step:
            for c in self.callbacks.callbacks:
                if type(c).__name__ == "MetricsFile":
                    c.path = Path("/dev/full")
        return original(self, result)

    return wrapper


def console_to_a_full_disk():
    """A patch wrapper for _start_fit: the console (stdout) goes to /dev/full (ENOSPC) from the first step."""
    def wrapper(original, self):
        for c in self.callbacks.callbacks:
            if type(c).__name__ == "ConsoleLogger":
                c.stream = open("/dev/full", "w")  # noqa: SIM115 - closed with the process
        return original(self)

    return wrapper

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


def index_write_failing(errno_name: str):
    """A patch wrapper for _build_datasets: writing the sample indices into data.cache_dir fails with `errno_name`,
    wrapped in a bare Exception as megatron-core's dataset builder wraps it."""
    import errno
    import os

    def wrapper(original, self):
        from vffn_pretrain.data import builder

        def failing(cfg, **kwargs):
            code = getattr(errno, errno_name)
            cause = OSError(code, os.strerror(code), str(builder.index_cache_dir(cfg) / "0123-document_index.npy"))
            raise Exception("Failed to write dataset materials to the data cache directory") from cause

        saved, builder.build_datasets = builder.build_datasets, failing
        try:
            return original(self)
        finally:
            builder.build_datasets = saved

    return wrapper
