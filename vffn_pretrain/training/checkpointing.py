"""Checkpoints that never lose a run.

Layout under `checkpoint.dir`:
    step_0000100/          one megatron-core distributed checkpoint (model, optimizer) + common state
        rng/rank_00003.pt  per-rank RNG states (restored only when the layout is unchanged)
    latest                 the name of the newest complete checkpoint, replaced atomically, written last

A save goes to `.tmp-step_0000100/` and is renamed into place once every rank has written its part, so a crash
mid-save leaves the previous checkpoint intact and `latest` pointing at it. On resume, a checkpoint that fails
to load is reported and the next older one is tried. With `async_save` the files are written in the background
(`async_save.py`) and the rename, `latest` and pruning wait until every rank has finished writing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.parallel.init import device as rank_device
from vffn_pretrain.planning.loops import LOOP_STATS_FILE, write_loop_stats
from vffn_pretrain.training import dist_ckpt
from vffn_pretrain.training.async_save import BackgroundWriteError, BackgroundWriter
from vffn_pretrain.training.faults import FAULTS
from vffn_pretrain.training.optimizer_layouts import LayoutRefused
from vffn_pretrain.training.rank0 import decided_by_rank0

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{7,})$")
# A pruned checkpoint is renamed to this prefix + its name (instant), then deleted by a thread while training
# goes on: deleting a 354M checkpoint's files takes seconds. Leftovers (a kill -9 meanwhile) are removed by the
# next run's `sweep_partial_saves`.
PRUNED_PREFIX = ".pruned-"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class LoadedCheckpoint:
    path: Path
    common: dict[str, Any]


@dataclass
class SavedCheckpoint:
    """A checkpoint that became complete, and what saving it cost."""

    path: Path
    step: int
    blocking_s: float  # training time the save took (for a background save: staging, waiting, finalising)
    write_s: float | None  # a background save: the time its files took to write while training went on


def rng_state() -> dict:
    """This rank's generators: python, numpy and torch's CPU one (the same on any device), and the device's:
    megatron's model-parallel tracker and, on a GPU, CUDA's default generator. `device` is the device type."""
    from megatron.core import tensor_parallel

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
        "device": rank_device().type,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> str | None:
    """Restore `rng_state()`'s generators. The device's (tracker, CUDA) only when the checkpoint was written on
    the same device type: on CPU the tracker holds CPU generator states, on a GPU CUDA ones, and one cannot be
    set from the other. Returns a line saying what was skipped, or None."""
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved_on = state.get("device", "cuda" if "cuda" in state else "cpu")  # older checkpoints: inferred
    here = rank_device().type
    if saved_on != here:
        return (f"RNG: the checkpoint's model-parallel and device generator states are {saved_on} ones, this run "
                f"is on {here}: those generators keep this run's seeding (python, numpy and torch's CPU "
                "generator were restored)")
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    return None


class CheckpointManager:
    """Saves, lists, prunes and loads checkpoints in `root`, and says when the trainer saves (every `interval`
    steps and at the last step). Saving and loading are collective (all ranks call them).

    `last` is the newest complete checkpoint this process saved or resumed from (None before either).
    With `async_save`, `save` returns once the state is staged and the files are written in the background; the
    checkpoint becomes complete at a later `poll()` (every step) or `wait()`. `on_saved` is called (on every
    rank) with each checkpoint that becomes complete."""

    def __init__(self, root: str | Path, keep: int = 3, interval: int | None = None, async_save: bool = False,
                 on_saved: Callable[[SavedCheckpoint], None] | None = None):
        self.root = Path(root)
        self.keep = keep
        self.interval = interval
        self.last: Path | None = None
        self.writer = BackgroundWriter() if async_save else None
        self.on_saved = on_saved
        self._deletes: list[threading.Thread] = []

    # ---------------------------------------------------------------------------------------------- cadence
    def should_save(self, step: int, max_steps: int) -> bool:
        return step == max_steps or (self.interval is not None and step % self.interval == 0)

    def has_saved(self, step: int) -> bool:
        """Whether `last` is checkpoint `step`, or it is being written in the background (a stop right after a
        scheduled save need not save again)."""
        return (self.last is not None and self.last.name == step_dir_name(step)) or self.writing() == step

    def writing(self) -> int | None:
        """The step of the checkpoint being written in the background, None when no write is in flight."""
        return self.writer.step if self.writer else None

    # ---------------------------------------------------------------------------------------------- listing
    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, newest step first.

        A `step_*` directory exists only once every rank finished writing it (it is renamed into place), so the
        scan is the truth; `latest` can lag by one when a process dies between the rename and the marker update.
        """
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()),
                      key=lambda p: int(_STEP_DIR.match(p.name).group(1)), reverse=True)

    def latest(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[0] if found else None

    def check_marker(self) -> str | None:
        """Warn (and return the warning) when `latest` names no complete checkpoint: hand-edited or damaged."""
        marker = self.root / "latest"
        if not marker.exists():
            return None
        try:
            name = marker.read_text(errors="replace").strip()
        except OSError as e:
            name = f"<unreadable: {e}>"
        if _STEP_DIR.match(name) and (self.root / name).is_dir():
            return None
        newest = self.latest()
        msg = (f"{marker} names {name[:80]!r}, which is not a complete checkpoint; ignoring it and using the newest "
               f"step directory ({newest.name if newest else 'none'})")
        log.warning(msg)
        return msg

    # ---------------------------------------------------------------------------------------------- saving
    def save(self, step: int, ddp_chunks: list, optimizer, common: dict[str, Any], layout: dict,
             loop_stats: dict | None = None) -> Path:
        """Write checkpoint `step`; returns its directory. On a write error (a full disk, say) every rank raises
        CheckpointSaveError, the temporary directory is removed and older checkpoints are left as they were.
        `loop_stats` ({"pipeline_layout", "loop_hist"}) goes to the checkpoint's loop_stats.json (rank 0), which
        the pipeline planner reads on resume. With `async_save` a write in flight is finalised first, and this
        one is left in flight (the directory returned exists once it is complete)."""
        self.wait()
        start = time.perf_counter()
        rank = dist.get_rank()
        final, tmp = self._paths(step)
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crashed save
        dist.barrier()
        error = None
        try:
            request = dist_ckpt.save(tmp, ddp_chunks, optimizer, common={**common, "layout": layout},
                                     background=self.writer is not None)
            if FAULTS.enospc_in_save == step and request is None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            (tmp / "rng").mkdir(exist_ok=True)
            torch.save({"layout": layout, "state": rng_state()}, tmp / "rng" / f"rank_{rank:05d}.pt")
            if rank == 0 and loop_stats is not None:
                write_loop_stats(tmp, step, loop_stats["pipeline_layout"], loop_stats["loop_hist"])
            if request is not None:
                self.writer.start(step, request, commit=lambda: self._commit(step),
                                  staging_s=time.perf_counter() - start)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - reported below, on every rank
            error = _root_cause(e)
        if FAULTS.kill_in_save == step:
            os.kill(os.getpid(), 9)  # test hook: die after writing, before the checkpoint is complete
        if _any_rank(error is not None):
            if self.writer is not None:
                self.writer.abort()
            self._discard(step, error or "on another rank")
        if self.writer is None:
            self._commit(step)
            self._report(SavedCheckpoint(final, step, time.perf_counter() - start, None))
        return final

    def poll(self) -> None:
        """Collective, at a step boundary: complete the checkpoint being written in the background if every rank
        has finished writing it. Raises CheckpointSaveError (on every rank) if the write failed."""
        self._finalise(wait=False)

    def wait(self) -> None:
        """Collective: block until the checkpoint being written in the background (if any) is complete. Raises
        CheckpointSaveError (on every rank) if the write failed."""
        self._finalise(wait=True)

    def finish_after_error(self) -> None:
        """After an error that stops the run: complete the checkpoint being written in the background if every
        rank stops on an error too (an evaluation that raises on every rank, say); otherwise, or if the write
        fails, it is left incomplete and the previous checkpoint stays the newest. Bounded in time."""
        if self.writer is None or self.writer.step is None:
            return
        final, _ = self._paths(self.writer.step)
        try:
            if not self.writer.every_rank_stops():
                log.error("checkpoint %s was left incomplete: not every rank stopped", final)
                return
            self.wait()
        except Exception as e:  # noqa: BLE001 - the error that stops the run is the one to raise
            log.error("checkpoint %s was left incomplete: %s", final, e)

    def _finalise(self, wait: bool) -> None:
        if self.writer is None or self.writer.step is None:
            return
        try:
            done = self.writer.wait() if wait else self.writer.poll()
        except BackgroundWriteError as e:
            self._discard(e.step, e.writer_fate or _root_cause(e.cause))
        if done is not None:
            final, _ = self._paths(done.step)
            self._report(SavedCheckpoint(final, done.step, done.blocking_s, done.write_s))

    def _paths(self, step: int) -> tuple[Path, Path]:
        """(the checkpoint's directory, the temporary one it is written to)."""
        return self.root / step_dir_name(step), self.root / f".tmp-{step_dir_name(step)}"

    def _commit(self, step: int) -> None:
        """Collective, once every rank has written checkpoint `step`: rank 0 renames it into place, points
        `latest` at it and prunes the oldest."""
        final, tmp = self._paths(step)
        dist.barrier()
        if dist.get_rank() == 0:
            if final.exists():  # a re-save of the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            try:
                _write_atomically(self.root / "latest", final.name)
            except OSError as e:  # the directory scan is the truth; the marker is for people
                log.warning("could not update %s: %s", self.root / "latest", e)
            self._prune()
        dist.barrier()
        self.last = final

    def _discard(self, step: int, error: str) -> None:
        """Collective, after a failed save of `step`: remove its temporary directory and raise
        CheckpointSaveError."""
        final, tmp = self._paths(step)
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        raise CheckpointSaveError(f"saving checkpoint {final} failed: {error}; removed the partial {tmp.name}, "
                                  f"older checkpoints are intact")

    def _report(self, saved: SavedCheckpoint) -> None:
        if self.on_saved is not None:
            self.on_saved(saved)

    def _prune(self) -> None:
        """Rank 0: take the checkpoints beyond `keep` out of the listing at once (a rename) and delete their files
        in a thread. Not a daemon thread: the process ends only once they are gone."""
        self._deletes = [t for t in self._deletes if t.is_alive()]
        doomed = []
        for old in self.complete_checkpoints()[self.keep:]:
            pruned = old.with_name(PRUNED_PREFIX + old.name)
            shutil.rmtree(pruned, ignore_errors=True)  # a leftover of an earlier prune cut short
            try:
                os.replace(old, pruned)
            except OSError as e:
                log.warning("could not prune %s: %s", old, e)
                continue
            doomed.append(pruned)
        if doomed:
            thread = threading.Thread(target=_delete_all, args=(doomed,), name="checkpoint-prune")
            thread.start()
            self._deletes.append(thread)

    def finish_deletes(self) -> None:
        """Wait until the checkpoints pruned so far are deleted (before the run lets go of its directories)."""
        for thread in self._deletes:
            thread.join()
        self._deletes = []

    # ---------------------------------------------------------------------------------------------- loading
    def load_latest(self, ddp_chunks: list, optimizer, layout: dict,
                    check: Callable[[dict], None] | None = None) -> LoadedCheckpoint | None:
        """Collective. Load the newest checkpoint that loads; None if there is none.

        Rank 0 alone lists the checkpoints and every rank follows its list (`decided_by_rank0`). A checkpoint any
        piece of which is damaged (common state, model or optimizer shards, RNG states, loop stats) is reported
        in one line and the previous one tried; when none loads, a ConfigError names checkpoint.dir.
        `check(common)` runs on rank 0 before a checkpoint's weights are read (the trainer compares configs); a
        ConfigError it raises is raised on every rank.
        """
        if dist.get_rank() == 0:
            self.check_marker()
        names = decided_by_rank0(lambda: [p.name for p in self.complete_checkpoints()])
        failures = []
        for name in names:
            path = self.root / name
            error = decided_by_rank0(lambda path=path: _common_problem(path, check))
            loaded = None
            if error is None:
                loaded, error = self.try_load(path, ddp_chunks, optimizer, layout)
            if loaded is not None:
                self.last = loaded.path
                return loaded
            if dist.get_rank() == 0:
                log.error("checkpoint %s failed to load (%s); trying the previous one", path, error)
            failures.append(f"{name}: {error}")
        if names:
            raise ConfigError("checkpoint.dir", f"no checkpoint in {self.root} could be loaded ({'; '.join(failures)}); "
                                                "move them away (or set checkpoint.dir) to start anew")
        return None

    def try_load(self, path: Path, ddp_chunks: list, optimizer, layout: dict) -> tuple[LoadedCheckpoint | None, str]:
        """Collective. Load every piece of checkpoint `path`; (loaded, "") or (None, why) on every rank alike."""
        error, rng = None, None
        try:
            common = dist_ckpt.load(path, ddp_chunks, optimizer)
            _check_common(common)
            rng_file = path / "rng" / f"rank_{dist.get_rank():05d}.pt"
            if common.get("layout") == layout and rng_file.is_file():
                rng = torch.load(rng_file, weights_only=False)["state"]
            loop_stats = path / LOOP_STATS_FILE
            if dist.get_rank() == 0 and loop_stats.exists():
                json.loads(loop_stats.read_text())
        except LayoutRefused as e:  # every rank reads the same layout: no fallback would load either
            raise LayoutRefused(e.key, f"checkpoint {path}: {e}") from None
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - damaged: report it, fall back
            error = load_error_text(e, path)
        failed = torch.tensor([1.0 if error else 0.0], device=rank_device())  # NCCL takes no CPU tensors
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            return None, error or "failed on another rank"
        if rng is not None:
            skipped = set_rng_state(rng)
            if skipped and dist.get_rank() == 0:
                log.warning(skipped)
        elif dist.get_rank() == 0:
            log.info("checkpoint layout %s differs from this run's %s: RNG states not restored",
                     common.get("layout"), layout)
        return LoadedCheckpoint(path, common), ""

    def sweep_partial_saves(self) -> list[Path]:
        """Remove the temporary directories of saves cut short (kill -9 mid-save), which it returns, and of
        prunes cut short; rank 0, holding the lock."""
        if not self.root.is_dir():
            return []
        partial = [p for p in self.root.iterdir() if p.name.startswith(".tmp-step_") and p.is_dir()]
        pruned = [p for p in self.root.iterdir() if p.name.startswith(PRUNED_PREFIX) and p.is_dir()]
        _delete_all(partial + pruned)
        return partial


def load_error_text(e: BaseException, path: Path) -> str:
    """Why checkpoint `path` failed to load, in one line: torch's CheckpointException unwrapped to the first
    rank's own error (its text is a list of ranks and tracebacks), a JSON error named by its file."""
    if isinstance(e, CheckpointException) and e.failures:
        first = next(iter(e.failures.values()))
        e = first[0] if isinstance(first, tuple) else first
    where = ""
    if isinstance(e, json.JSONDecodeError):  # which of the checkpoint's JSON files is it?
        for candidate in sorted(Path(path).glob("*.json")):
            try:
                json.loads(candidate.read_text())
            except (OSError, ValueError):
                where = f"{candidate}: "
                break
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{where}{type(e).__name__}: {text}"


def _delete_all(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def read_common(path: Path) -> dict:
    """The common state a checkpoint holds (step, consumed samples, scheduler, config, ...)."""
    from megatron.core import dist_checkpointing

    return dict(dist_checkpointing.load_common_state_dict(str(path))["common"])


def _check_common(common: dict) -> None:
    """ValueError unless the common state holds what a resume reads."""
    for key in ("step", "consumed_samples"):
        value = common.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"common state: {key} is {value!r}")
    if not isinstance(common.get("scheduler"), dict):
        raise ValueError("common state: no scheduler state")


def _common_problem(path: Path, check: Callable[[dict], None] | None) -> str | None:
    """Why checkpoint `path`'s common state is unusable (None: it is usable); `check` may raise ConfigError."""
    try:
        common = read_common(path)
        _check_common(common)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - damaged
        return load_error_text(e, path)
    if check is not None:
        check(common)
    return None


def saved_config(path: Path) -> dict | None:
    """The resolved config saved with a checkpoint (None if unreadable or absent)."""
    try:
        config = read_common(path).get("config")
    except Exception:  # noqa: BLE001 - a damaged checkpoint has no config to compare
        return None
    return dict(config) if isinstance(config, dict) else None


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (its temporary directory was removed)."""


_ERRNO_TEXT = re.compile(r"\[Errno \d+\][^\n]*")


def _root_cause(e: BaseException) -> str:
    """One line for a save error: the OSError underneath when there is one (megatron wraps them per rank, and
    the errors of its writer processes reach the coordinator as text: "Worker failure: [Errno 28] ...")."""
    seen = set()
    stack = [e]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno:
            return f"[Errno {err.errno}] {err.strerror}" + (f": {err.filename}" if err.filename else "")
        found = _ERRNO_TEXT.search(str(err))
        if found:
            return found.group(0)
        stack += [c for c in (err.__cause__, err.__context__) if c is not None]
        failures = getattr(err, "failures", {}).values()  # {rank: exception or (exception, traceback)}
        stack += [f[0] if isinstance(f, tuple) else f for f in failures]
        stack = [x for x in stack if isinstance(x, BaseException)]
        stack += [a for a in err.args if isinstance(a, BaseException)]
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def _any_rank(flag: bool) -> bool:
    from vffn_pretrain.parallel.init import device

    t = torch.tensor([1.0 if flag else 0.0], device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
