"""`vffn-eval`: zero-shot evaluation of a checkpoint or an exported model with lm-evaluation-harness.

    vffn-eval --checkpoint runs/tiny-versatile/checkpoints --tasks jargon_cloze --out eval.json
    vffn-eval --hf hf/tiny-versatile --tasks paper --batch-size 16

--checkpoint is exported first (vffn-export, fp32, into a temporary directory); --hf takes an exported
directory (or any causal LM directory transformers can load; remote code is trusted). The harness's `hf` model
(HFLM) runs `lm_eval.simple_evaluate`; the results table is printed and the full results written as JSON.

Tasks: any lm-evaluation-harness task name, `jargon_cloze` (shipped with this package: offline, built from the
bundled corpus's held-out documents), or `paper` for the paper's eight zero-shot tasks. Tasks other than
jargon_cloze download their data from the Hugging Face hub: with no network (or HF_DATASETS_OFFLINE=1 and no
cached copy) the command stops with one line instead of waiting.

Exit codes: 0 done, 1 error (a task's data cannot be fetched), 2 bad input (unknown task, missing model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

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
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


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


def check_task_names(names: list[str], task_manager) -> None:
    unknown = [n for n in names if n not in task_manager.all_tasks]
    if unknown:
        raise EvalError(f"--tasks: unknown task(s) {', '.join(unknown)} (lm-evaluation-harness tasks, "
                        f"{', '.join(LOCAL_TASKS)} or paper)")


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


def evaluate(hf_dir: str, names: list[str], task_manager, *, limit, batch_size: int, device: str) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=hf_dir, trust_remote_code=True, dtype="float32", batch_size=batch_size, device=device)
    return lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=task_manager,
                                   log_samples=False, bootstrap_iters=1000)


def run(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    names = expand_tasks(args.tasks)
    if args.hf and not (Path(args.hf) / "config.json").is_file():
        raise EvalError(f"--hf {args.hf}: not a Hugging Face model directory (no config.json)")
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(TASKS_DIR))
    check_task_names(names, task_manager)  # before any network check: a typo is not a network problem
    needs_hub = [n for n in names if n not in LOCAL_TASKS]
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
                hf_dir = str(export_checkpoint(args.checkpoint, Path(tmp) / "hf"))
            except ExportError as e:
                raise EvalError(str(e)) from None
        try:
            results = evaluate(hf_dir, names, task_manager, limit=args.limit, batch_size=args.batch_size,
                               device=args.device)
        except Exception as e:  # noqa: BLE001 - a task's data could not be fetched or read
            if not needs_hub:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EvalError(f"--tasks: could not load the data of {', '.join(needs_hub)} "
                            f"({type(e).__name__}: {first})", code=1) from None
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
    data["downstream"] = {**(data.get("downstream") or {}), **downstream_scores(results)}
    tmp = summary.with_name(f".{summary.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    try:
        results = run(argv)
    except EvalError as e:
        print(f"vffn-eval: {e}", file=sys.stderr)
        sys.exit(e.code)
    from lm_eval.utils import handle_non_serializable, make_table

    print(make_table(results))
    args = _parse(argv)
    if args.checkpoint:
        summary = record_in_summary(args.checkpoint, results)
        if summary is not None:
            print(f"vffn-eval: recorded the scores under 'downstream' in {summary}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2, default=handle_non_serializable))
        os.replace(tmp, out)
        print(f"vffn-eval: wrote {out}")


if __name__ == "__main__":
    main()
