"""`vffn-eval`: zero-shot evaluation of a checkpoint or an exported model with lm-evaluation-harness.

    vffn-eval --checkpoint runs/tiny-versatile/checkpoints --tasks jargon_cloze --out eval.json
    vffn-eval --hf hf/tiny-versatile --tasks paper --batch-size 16

--checkpoint is exported first (vffn-export, fp32, into a temporary directory); --hf takes an exported
directory (or any causal LM directory transformers can load; remote code is trusted). The harness's `hf` model
(HFLM) runs `lm_eval.simple_evaluate`; the results table is printed and the full results written as JSON.

Tasks: any lm-evaluation-harness task name, `jargon_cloze` (shipped with this package: offline, built from the
bundled corpus's held-out documents), `paper` for the paper's eight zero-shot tasks, or a task of your own in
a directory of lm-eval task YAML files given with --include-path. Tasks other than jargon_cloze and your own
download their data from the Hugging Face hub: with no network (or HF_DATASETS_OFFLINE=1 and no cached copy)
the command stops with one line instead of waiting.

Before anything is loaded: --limit (a count >= 1, or a fraction in (0, 1)), --batch-size (>= 1) and --device
(cpu, cuda, cuda:N, mps; the device must exist) are checked, and so is --out: not over the model it reads, not
a directory, not an existing file other than a vffn-eval result, not written by another vffn-eval meanwhile
(`OUT.lock`). A finished evaluation is never lost: if --out cannot be written at the end, the results go to a
file in the temporary directory and the line says where.

Exit codes: 0 done, 1 error (a task's data cannot be fetched, the model cannot be run, --out could not be
written: the results were saved elsewhere, another vffn-eval writes --out), 2 bad input (unknown task, missing
or damaged model, a bad option or --out), 130 interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from vffn_pretrain.outputs.apart import NotOurOutput, OutputOverlapsInput, check_apart, check_replaceable
from vffn_pretrain.outputs.atomic import sweep_stale_partials, write_json_atomic, write_text_atomic
from vffn_pretrain.process.streams import survive_closed_output

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASKS = ("jargon_cloze",)
# The paper's eight zero-shot benchmarks (PIQA, HellaSwag, OBQA, SciQ, ARC-e, ARC-c, CommonsenseQA, Winogrande).
PAPER_TASKS = ("piqa", "hellaswag", "openbookqa", "sciq", "arc_easy", "arc_challenge", "commonsense_qa",
               "winogrande")


class EvalError(Exception):
    """The one line printed; `code` is the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _parse(argv):
    p = argparse.ArgumentParser(prog="vffn-eval", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint.dir or a step_* directory (exported on the fly)")
    src.add_argument("--hf", help="a Hugging Face model directory (e.g. written by vffn-export)")
    p.add_argument("--tasks", required=True, help="comma-separated task names; `paper` = the paper's 8 tasks")
    p.add_argument("--limit", type=float, default=None, help="examples per task (or a fraction if < 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps [cpu]")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a directory of your own lm-eval task YAML files (repeatable)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="with --checkpoint: the tokenizer, when the run's data.tokenizer has moved [the run's]")
    return p.parse_args(argv)


def check_numbers(args) -> None:
    """--limit, --batch-size and --device, before anything is loaded."""
    if args.limit is not None:
        if not (math.isfinite(args.limit) and args.limit > 0) or (args.limit >= 1 and args.limit != int(args.limit)):
            raise EvalError(f"--limit must be a whole number of examples >= 1 or a fraction in (0, 1), got "
                            f"{args.limit:g}")
        if args.limit >= 1:
            args.limit = int(args.limit)
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {args.batch_size}")
    args.device = check_device(args.device)


def check_device(device: str) -> str:
    """`device` if this machine has it; EvalError otherwise."""
    import torch

    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", device.strip())
    if match is None:
        raise EvalError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu" and index is None:
        return "cpu"
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= count:
            raise EvalError(f"--device {device}: this machine has {count} CUDA device(s)")
        return device.strip()
    if kind == "mps" and index is None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    raise EvalError(f"--device {device}: not available on this machine")


def is_eval_result(path: Path) -> bool:
    """A results file vffn-eval wrote (lm-eval's JSON: an object with "results")."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "results" in data


def check_out(out: Path, args) -> None:
    """--out before anything is evaluated (see the module docstring)."""
    try:
        check_apart({"--out": out}, {"--checkpoint": args.checkpoint, "--hf": args.hf, "--tokenizer": args.tokenizer,
                                     "--include-path": args.include_path})
        if out.is_dir():
            raise EvalError(f"--out {out} is a directory; give a file name")
        check_replaceable(out, ours=is_eval_result, what="a vffn-eval result", flag="--out")
    except (OutputOverlapsInput, NotOurOutput) as e:
        raise EvalError(str(e)) from None


def check_model_dir(hf: str) -> None:
    """--hf: a directory with a readable config.json (a damaged one is one line naming it)."""
    config = Path(hf) / "config.json"
    if not config.is_file():
        raise EvalError(f"--hf {hf}: not a Hugging Face model directory (no config.json)")
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EvalError(f"{config}: not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        raise EvalError(f"{config}: expected a JSON object, got {type(data).__name__}")


def check_include_paths(paths: list[str]) -> list[str]:
    for path in paths:
        if not Path(path).is_dir():
            raise EvalError(f"--include-path {path}: not a directory (a directory of lm-eval task YAML files)")
    return [str(TASKS_DIR), *paths]


def expand_tasks(spec: str) -> list[str]:
    names: list[str] = []
    for name in (t.strip() for t in spec.split(",")):
        if not name:
            continue
        for task in (PAPER_TASKS if name == "paper" else (name,)):
            if task not in names:
                names.append(task)
    if not names:
        raise EvalError("--tasks: no task named")
    return names


def check_task_names(names: list[str], task_manager, include_paths: list[str] = ()) -> None:
    unknown = [n for n in names if n not in task_manager.all_tasks]
    if unknown:
        yours = f", those in {', '.join(include_paths)}" if include_paths else ", or your own with --include-path"
        raise EvalError(f"--tasks: unknown task(s) {', '.join(unknown)} (lm-evaluation-harness tasks, "
                        f"{', '.join(LOCAL_TASKS)}, paper{yours})")


LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets builders that read local files


def local_task_names(task_manager, include_paths: list[str]) -> set[str]:
    """The tasks of the user's --include-path directories whose data is local (a custom_dataset function, a
    local datasets builder or directory): they need no network."""
    roots = [Path(p).resolve() for p in include_paths]
    names = set()
    for name, entry in getattr(task_manager, "task_index", {}).items():
        yaml_path, cfg = getattr(entry, "yaml_path", None), getattr(entry, "cfg", None) or {}
        if yaml_path is None or not any(r in Path(yaml_path).resolve().parents for r in roots):
            continue
        source = cfg.get("dataset_path")
        if "custom_dataset" in cfg or source in LOCAL_BUILDERS or (source and Path(str(source)).is_dir()):
            names.add(name)
    return names


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub (HF_ENDPOINT) opens within `timeout_s` (name lookup
    included: it runs in a thread, so a resolver that hangs cannot hold the command)."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((url.hostname, port), timeout=timeout_s).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 1)
    return bool(ok)


def set_offline_environment() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def load_model(hf_dir: str, *, batch_size: int, device: str):
    from lm_eval.models.huggingface import HFLM

    try:
        return HFLM(pretrained=hf_dir, trust_remote_code=True, dtype="float32", batch_size=batch_size, device=device)
    except Exception as e:  # noqa: BLE001 - missing or damaged weights, code or config: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"the model {hf_dir} cannot be loaded ({type(e).__name__}: {first})") from None


def evaluate(lm, names: list[str], task_manager, *, limit) -> dict:
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=task_manager,
                                   log_samples=False, bootstrap_iters=1000)


def check_args(args) -> None:
    """Everything that needs no work: the options, --hf, --include-path, --out."""
    expand_tasks(args.tasks)
    check_numbers(args)
    if args.hf:
        check_model_dir(args.hf)
    if args.checkpoint:
        from vffn_pretrain.export.cli import ExportError, check_checkpoint_path

        try:
            check_checkpoint_path(args.checkpoint)
        except ExportError as e:
            raise EvalError(str(e)) from None
    check_include_paths(args.include_path)
    if args.out:
        check_out(Path(args.out), args)


def run(args) -> dict:
    """Export (with --checkpoint) and evaluate (`check_args` has passed); returns lm-eval's results."""
    from vffn_pretrain.evaluation.task_index import task_manager as make_task_manager

    names = expand_tasks(args.tasks)
    task_manager = make_task_manager(check_include_paths(args.include_path))
    check_task_names(names, task_manager, args.include_path)  # before any network check: a typo is not a network problem
    offline_tasks = {*LOCAL_TASKS, *local_task_names(task_manager, args.include_path)}
    needs_hub = [n for n in names if n not in offline_tasks]
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if needs_hub and not offline and not hub_reachable():
        raise EvalError(f"--tasks: {', '.join(needs_hub)} download their data from the Hugging Face hub, which "
                        "cannot be reached (no network?); run where it can be, or set HF_DATASETS_OFFLINE=1 to "
                        f"use a cached copy ({', '.join(LOCAL_TASKS)} works offline)", code=1)
    # The model is a local directory and the local task reads a local file: never touch the network for them.
    if not needs_hub:
        set_offline_environment()

    with tempfile.TemporaryDirectory(prefix="vffn-eval-") as tmp:
        hf_dir = args.hf
        if args.checkpoint:
            from vffn_pretrain.export.cli import ExportError, export_checkpoint

            try:
                hf_dir = str(export_checkpoint(args.checkpoint, Path(tmp) / "hf", tokenizer=args.tokenizer,
                                               prog="vffn-eval"))
            except ExportError as e:
                raise EvalError(str(e)) from None
        lm = load_model(hf_dir, batch_size=args.batch_size, device=args.device)
        try:
            results = evaluate(lm, names, task_manager, limit=args.limit)
        except Exception as e:  # noqa: BLE001 - a task's data could not be fetched or read, or the model failed
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            what = f"could not load the data of {', '.join(needs_hub)}" if needs_hub else "the evaluation failed"
            raise EvalError(f"--tasks: {what} ({type(e).__name__}: {first})", code=1) from None
    return results


def downstream_scores(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of an lm_eval result (metric names without lm_eval's ",none" filter suffix)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        scores = {name.split(",")[0]: float(value) for name, value in metrics.items()
                  if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}
        if scores:
            out[task] = scores
    return out


def record_in_summary(checkpoint: str, results: dict) -> Path | None:
    """Add the scores to the `summary.json` of the run that owns `checkpoint` (a step directory or the run's
    checkpoint.dir; the summary sits in the run directory above), under "downstream", so that `vffn-scaling`
    shows them next to the loss. Returns the file updated, or None when the checkpoint has no run summary."""
    start = Path(checkpoint).resolve()
    for directory in (start, start.parent, start.parent.parent):
        summary = directory / "summary.json"
        if summary.is_file():
            break
    else:
        return None
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    downstream = data.get("downstream")
    data["downstream"] = {**(downstream if isinstance(downstream, dict) else {}), **downstream_scores(results)}
    write_json_atomic(summary, data)
    return summary


def save_results(results: dict, out: Path, why: str | None = None) -> tuple[Path, str | None]:
    """Write `results` to `out` (unless `why` says it must not be); if that fails (disk full, the directory gone
    or read-only), to a file in the temporary directory instead, or as the last resort to stdout. Returns (where
    they are, why not `out`, or None)."""
    from lm_eval.utils import handle_non_serializable

    text = json.dumps(results, indent=2, default=handle_non_serializable) + "\n"
    if why is None:
        try:
            write_text_atomic(out, text)
            return out, None
        except OSError as e:
            why = e.strerror or str(e)
    fallback = Path(tempfile.gettempdir()) / f"vffn-eval-results-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    try:
        fallback.write_text(text)
    except OSError:
        print(text)  # the last place left: stdout
        return Path("-"), why
    return fallback, why


def main(argv: list[str] | None = None) -> None:
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    import warnings

    from vffn_pretrain.outputs.lock import OutputInUse, claim_output
    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible

    warnings.filterwarnings("ignore")
    args = _parse(argv)
    lock = None
    try:
        with interruptible():
            check_args(args)
            if args.out:
                try:
                    lock = claim_output(args.out, "--out", "vffn-eval")
                except OutputInUse as e:
                    raise EvalError(str(e), code=1) from None
                except OSError as e:
                    raise EvalError(f"--out {args.out}: cannot be written ({e})") from None
                sweep_stale_partials(args.out, warn=lambda message: print(f"vffn-eval: {message}", file=sys.stderr))
            finish(args, run(args), lock)
    except EvalError as e:
        print(f"vffn-eval: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt as stop:
        print(f"vffn-eval: {interrupted(stop)}; no results were written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if lock is not None:
            lock.release()


def finish(args, results: dict, lock) -> None:
    """Print the table, record the scores in the run's summary.json, write --out; raise EvalError (exit 1)
    when the results could not go to --out (they are then in the file the message names)."""
    from lm_eval.utils import make_table

    from vffn_pretrain.outputs.lock import OutputInUse

    print(make_table(results))
    if args.checkpoint:
        try:
            summary = record_in_summary(args.checkpoint, results)
        except OSError as e:
            print(f"vffn-eval: could not record the scores in the run's summary.json: {e}", file=sys.stderr)
        else:
            if summary is not None:
                print(f"vffn-eval: recorded the scores under 'downstream' in {summary}")
    if args.out:
        out = Path(args.out)
        try:
            lock.verify()
            lost = None
        except OutputInUse as e:  # another writer took --out meanwhile: do not write over its results
            lost = str(e)
        where, why = save_results(results, out, lost)
        if why is not None:
            raise EvalError(f"cannot write --out {out} ({why}); the results were written to {where} instead",
                            code=1)
        print(f"vffn-eval: wrote {out}")


if __name__ == "__main__":
    main()
