"""Checkpoints that never lose a run.

Layout under `checkpoint.dir`:
    step_0000100/          one megatron-core distributed checkpoint (model, optimizer) + common state
        rng/rank_00003.pt  per-rank RNG states (restored only when the layout is unchanged)
    latest                 the name of the newest complete checkpoint, replaced atomically, written last

A save goes to `.tmp-step_0000100/` and is renamed into place once every rank has written its part, so a crash
mid-save leaves the previous checkpoint intact and `latest` pointing at it. On resume, a checkpoint that fails
to load is reported and the next older one is tried.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from vffn_pretrain.parallel.init import device as rank_device
from vffn_pretrain.planning.loops import write_loop_stats
from vffn_pretrain.training import dist_ckpt
from vffn_pretrain.training.faults import FAULTS

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class LoadedCheckpoint:
    path: Path
    common: dict[str, Any]


def rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


class CheckpointManager:
    """Saves, lists, prunes and loads checkpoints in `root`, and says when the trainer saves (every `interval`
    steps and at the last step). Saving and loading are collective (all ranks call them).

    `last` is the newest checkpoint this process saved or resumed from (None before either)."""

    def __init__(self, root: str | Path, keep: int = 3, interval: int | None = None):
        self.root = Path(root)
        self.keep = keep
        self.interval = interval
        self.last: Path | None = None

    # ---------------------------------------------------------------------------------------------- cadence
    def should_save(self, step: int, max_steps: int) -> bool:
        return step == max_steps or (self.interval is not None and step % self.interval == 0)

    def has_saved(self, step: int) -> bool:
        """Whether `last` is checkpoint `step` (a stop right after a scheduled save need not save again)."""
        return self.last is not None and self.last.name == step_dir_name(step)

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
        the pipeline planner reads on resume."""
        rank = dist.get_rank()
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crashed save
        dist.barrier()
        error = None
        try:
            dist_ckpt.save(tmp, ddp_chunks, optimizer, common={**common, "layout": layout})
            if FAULTS.enospc_in_save == step:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            (tmp / "rng").mkdir(exist_ok=True)
            torch.save({"layout": layout, "state": rng_state()}, tmp / "rng" / f"rank_{rank:05d}.pt")
            if rank == 0 and loop_stats is not None:
                write_loop_stats(tmp, step, loop_stats["pipeline_layout"], loop_stats["loop_hist"])
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - reported below, on every rank
            error = _root_cause(e)
        if FAULTS.kill_in_save == step:
            os.kill(os.getpid(), 9)  # test hook: die after writing, before the checkpoint is complete
        if _any_rank(error is not None):
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            dist.barrier()
            raise CheckpointSaveError(f"saving checkpoint {final} failed: {error or 'on another rank'}; removed "
                                      f"the partial {tmp.name}, older checkpoints are intact")
        dist.barrier()
        if rank == 0:
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
        return final

    def _prune(self) -> None:
        for old in self.complete_checkpoints()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- loading
    def load_latest(self, ddp_chunks: list, optimizer, layout: dict,
                    config: dict | None = None) -> LoadedCheckpoint | None:
        """Load the newest checkpoint that loads; None if there is none. Reports each one that fails.

        With `config` (this run's resolved config), a checkpoint that fails to load and was saved with a
        different model raises ModelChangedError listing the keys that differ: older checkpoints of the same
        run would fail the same way.
        """
        self.check_marker()
        candidates = self.complete_checkpoints()
        for path in candidates:
            loaded = self.try_load(path, ddp_chunks, optimizer, layout)
            if loaded is not None:
                self.last = loaded.path
                return loaded
            if config is not None:
                changed = model_changes(saved_config(path), config)
                if changed:
                    raise ModelChangedError(
                        f"{path} was saved with a different model: {'; '.join(changed)}. Resume with the saved "
                        f"values, or start anew in another run_dir (or checkpoint.resume=false)")
        if candidates:
            raise RuntimeError(f"no checkpoint in {self.root} could be loaded (tried {[p.name for p in candidates]})")
        return None

    def try_load(self, path: Path, ddp_chunks: list, optimizer, layout: dict) -> LoadedCheckpoint | None:
        error = None
        try:
            common = dist_ckpt.load(path, ddp_chunks, optimizer)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - damaged: report it, fall back
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            common = {}
        failed = torch.tensor([1.0 if error else 0.0], device=rank_device())  # NCCL takes no CPU tensors
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            if dist.get_rank() == 0 or error:
                log.error("checkpoint %s failed to load (%s); trying the previous one", path,
                          error or "failed on another rank")
            return None
        rng_file = path / "rng" / f"rank_{dist.get_rank():05d}.pt"
        same_layout = common.get("layout") == layout
        if same_layout and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False)["state"])
        elif dist.get_rank() == 0:
            log.info("checkpoint layout %s differs from this run's %s: RNG states not restored",
                     common.get("layout"), layout)
        return LoadedCheckpoint(path, common)


class ModelChangedError(ValueError):
    """The checkpoint to resume holds another model than the config describes."""


# The config groups that decide the parameters' names and shapes.
MODEL_GROUPS = ("model", "ffn")


def saved_config(path: Path) -> dict | None:
    """The resolved config saved with a checkpoint (None if unreadable)."""
    from megatron.core import dist_checkpointing

    try:
        return dict(dist_checkpointing.load_common_state_dict(str(path))["common"]["config"])
    except Exception:  # noqa: BLE001 - a damaged checkpoint has no config to compare
        return None


def model_changes(saved: dict | None, current: dict) -> list[str]:
    """`group.key: saved -> current` for every model/ffn key whose value differs."""
    if not saved:
        return []
    out = []
    for group in MODEL_GROUPS:
        old, new = saved.get(group) or {}, current.get(group) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                out.append(f"{group}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (its temporary directory was removed)."""


def _root_cause(e: BaseException) -> str:
    """One line for a save error: the OSError underneath when there is one (megatron wraps them per rank)."""
    seen = set()
    stack = [e]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno:
            return f"[Errno {err.errno}] {err.strerror}" + (f": {err.filename}" if err.filename else "")
        stack += [c for c in (err.__cause__, err.__context__) if c is not None]
        stack += [v for v in getattr(err, "failures", {}).values() if isinstance(v, BaseException)]
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
