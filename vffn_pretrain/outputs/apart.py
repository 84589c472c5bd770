"""An output never overlaps what the command reads.

A tool that writes its output over its own input destroys what it is reading: an export whose `--out` is the
run directory it exports (with `--overwrite` the run, checkpoints included, is replaced), a tokenizer trained
into its own input file, a corpus built into its package cache. `check_apart` compares every output path with
every input path, symlinks and hard links resolved, and refuses an output that is an input, contains one or lies
inside one, whatever `--overwrite` says. Every tool calls it before any work.

`check_replaceable` is the other half: `--overwrite` replaces only what is recognisably this tool's own kind of
output (or an empty directory), never whatever else happens to sit at the path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

PathLike = str | os.PathLike


class OutputOverlapsInput(ValueError):
    """An output path is, contains or lies inside a path the command reads."""


class NotOurOutput(FileExistsError):
    """The output path holds something this tool did not write; it is not replaced."""


def _resolved(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def relation(output: PathLike, read: PathLike) -> str | None:
    """How `output` overlaps `read`: "is", "contains", "lies inside", or None when they are apart."""
    out, inp = _resolved(output), _resolved(read)
    if out == inp or _same_file(out, inp):
        return "is"
    if out in inp.parents:
        return "contains"
    if inp in out.parents:
        return "lies inside"
    return None


def _paths(value: PathLike | Iterable[PathLike] | None) -> list[PathLike]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [value]
    return [v for v in value if v is not None]


def check_apart(outputs: Mapping[str, PathLike | Iterable[PathLike] | None],
                inputs: Mapping[str, PathLike | Iterable[PathLike] | None]) -> None:
    """Raise OutputOverlapsInput if any output path is, contains or lies inside any input path.

    outputs / inputs: {label: path or paths}; the label names the flag or file in the message (`--out`,
    `--checkpoint`, `the tokenizer`). Paths need not exist."""
    for out_label, outs in outputs.items():
        for out in _paths(outs):
            for in_label, reads in inputs.items():
                for read in _paths(reads):
                    how = relation(out, read)
                    if how is not None:
                        raise OutputOverlapsInput(
                            f"{out_label} {out} {how} {in_label} {read}, which this command reads: writing there would "
                            f"destroy it (--overwrite or not); choose another {out_label}")


def check_replaceable(path: PathLike, *, ours: Callable[[Path], bool], what: str, flag: str = "--out") -> None:
    """Raise NotOurOutput when `path` exists and is neither an empty directory nor `what` (this tool's own kind
    of output, as `ours(path)` judges): such a path is never replaced, --overwrite or not. Whether an output of
    this tool's own kind is replaced (--overwrite) stays the tool's decision."""
    p = Path(path)
    if not os.path.lexists(p):
        return
    if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
        return
    if not ours(p):
        raise NotOurOutput(f"{flag} {path} already exists and is not {what}: refusing to replace it (only {what} is "
                           f"replaced, --overwrite or not); choose another {flag} or move it away")
