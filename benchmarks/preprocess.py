"""Benchmark ``vffn-data tokenize`` against a straightforward tokenizing loop.

Usage: ``python benchmarks/preprocess.py [--sizes-mb 8,32] [--json] [--workdir DIR]``

The corpus is the bundled Jargon File, one JSON line per blank-line-separated block, repeated to reach each
size; the tokenizer is the bundled byte-level BPE. Three methods run on the same file, one after another, each
in a fresh process so that its peak memory is its own:

* ``loop``: the straightforward single-process loop: read a line, ``json.loads``, ``Tokenizer.encode``,
  append the end-of-document id, ``IndexedDatasetBuilder.add_document``; ``finalize``;
* ``vffn-data --workers 1`` and ``vffn-data --workers 2``.

Times exclude the interpreter start and imports (common to all three): the loop is timed from loading the
tokenizer to ``finalize``, vffn-data by the ``elapsed_s`` of its report (which includes starting its worker
processes). Each size runs ``--repeat`` rounds with the methods interleaved, keeping each method's best
throughput (other work on a shared machine only ever slows a run down) and its largest peak memory. Peak
memory is the main process's peak RSS plus the memory private to each worker (see ``_measure``). All three
outputs are checked to be byte-identical. Targets: 2 workers >= 1.7x the loop in tokens/s, and peak
memory that does not grow with the input (two sizes are run).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_TARGET = 1.7
MEMORY_GROWTH_LIMIT = 1.10  # "independent of the input size": under 10 % more at the larger size


def make_corpus(path: Path, size_mb: float) -> dict:
    """Write jargon blocks as jsonl, repeated until ``size_mb`` MB; return counts."""
    sys.path.insert(0, str(ROOT))
    from vffn_pretrain.data.assets import BUNDLED_CORPUS

    text = gzip.decompress(BUNDLED_CORPUS.read_bytes()).decode("utf-8")
    lines = [json.dumps({"text": b}) + "\n" for b in re.split(r"\n(?:[ \t]*\n)+", text) if b.strip()]
    target = int(size_mb * 1e6)
    written = docs = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            for line in lines:
                f.write(line)
                written += len(line.encode("utf-8"))
                docs += 1
                if written >= target:
                    break
    return {"bytes": written, "documents": docs}


def run_loop(input_path: str, prefix: str, tokenizer_path: str) -> dict:
    """The straightforward loop (runs in its own process)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    tok = Tokenizer.from_file(tokenizer_path)
    tok.encode_special_tokens = True  # as vffn-data does: document text never becomes control tokens
    eod = tok.token_to_id("<|endoftext|>")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    tokens = docs = 0
    with open(input_path, encoding="utf-8") as f:
        for line in f:
            ids = tok.encode(json.loads(line)["text"], add_special_tokens=False).ids
            ids.append(eod)
            builder.add_document(np.array(ids, dtype=np.uint16), [len(ids)])
            tokens += len(ids)
            docs += 1
    builder.finalize(prefix + ".idx")
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "documents": docs}


def _hwm_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process, in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _private_mb(pid: int) -> float | None:
    """Memory only this process holds (private clean + dirty pages), in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024
    except OSError:
        return None


def _measure(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; return (completed process, peak memory of the process tree in MB, wall seconds).

    Peak memory is the main process's peak RSS (the kernel's VmHWM, exact) plus, for each worker process, the
    largest memory private to it seen while sampling every 0.25 s. Workers are forked, so they share the main
    process's pages: adding their RSS would count those pages again. Private memory is costly to read (the
    kernel walks the page tables), hence the slower sampling; a worker's memory is a steady plateau.
    """
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    root = psutil.Process(proc.pid)
    main_peak = 0.0
    worker_peak: dict[int, float] = {}
    next_worker_sample = 0.0
    while proc.poll() is None:
        hwm = _hwm_mb(proc.pid)
        main_peak = max(main_peak, hwm or 0.0)
        now = time.perf_counter()
        if now >= next_worker_sample:
            next_worker_sample = now + 0.25
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                private = _private_mb(child.pid)
                if private is not None:
                    worker_peak[child.pid] = max(worker_peak.get(child.pid, 0.0), private)
        time.sleep(0.01)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), main_peak + sum(worker_peak.values()), wall


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bench_one(method: str, input_path: Path, workdir: Path, tokenizer: str) -> dict:
    prefix = str(workdir / f"{input_path.stem}-{method}")
    if method == "loop":
        cmd = [sys.executable, __file__, "--_loop", str(input_path), prefix, tokenizer]
        done, peak, wall = _measure(cmd)
        res = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        workers = method.split("=")[1]
        cmd = [sys.executable, "-m", "data_tools.cli", "tokenize", "--input", str(input_path), "--output-prefix",
               prefix, "--tokenizer", tokenizer, "--workers", workers, "--no-progress", "--overwrite"]
        done, peak, wall = _measure(cmd)
        report = json.loads(Path(prefix + ".report.json").read_text())
        res = {"seconds": report["elapsed_s"], "tokens": report["tokens"],
               "documents": report["documents"]["written"]}
    res.update({"method": method, "peak_rss_mb": round(peak, 1), "process_wall_s": round(wall, 2),
                "tokens_per_s": res["tokens"] / res["seconds"], "bin_sha256": _sha(prefix + ".bin"),
                "idx_sha256": _sha(prefix + ".idx")})
    for suffix in (".bin", ".idx", ".report.json"):
        Path(prefix + suffix).unlink(missing_ok=True)
    return res


LABELS = {"loop": "straightforward loop", "workers=1": "vffn-data --workers 1", "workers=2": "vffn-data --workers 2"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="8,32", help="input sizes in MB, comma-separated [8,32]")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (after the table)")
    parser.add_argument("--workdir", default=None, help="where to write inputs and outputs [a temp dir]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds per size, methods interleaved; the best tokens/s and the largest peak memory "
                             "of each method are kept (the machine may be shared) [3]")
    parser.add_argument("--_loop", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._loop:
        print(json.dumps(run_loop(*args._loop)))
        return 0

    sys.path.insert(0, str(ROOT))
    from vffn_pretrain.data.assets import BUNDLED_TOKENIZER

    tokenizer = str(BUNDLED_TOKENIZER)
    sizes = [float(s) for s in args.sizes_mb.split(",")]
    load_before = list(os.getloadavg())
    methods = ["loop", "workers=1", "workers=2"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        runs = []
        for size in sizes:
            input_path = workdir / f"jargon-{size:g}mb.jsonl"
            corpus = make_corpus(input_path, size)
            rounds = [[bench_one(m, input_path, workdir, tokenizer) for m in methods] for _ in range(args.repeat)]
            for i in range(len(methods)):
                tries = [r[i] for r in rounds]
                best = max(tries, key=lambda r: r["tokens_per_s"])
                best.update({"size_mb": size, "input_bytes": corpus["bytes"],
                             "peak_rss_mb": max(r["peak_rss_mb"] for r in tries),
                             "tokens_per_s_all": [round(r["tokens_per_s"]) for r in tries]})
                runs.append(best)
            input_path.unlink()

    for size in sizes:
        group = [r for r in runs if r["size_mb"] == size]
        loop = next(r for r in group if r["method"] == "loop")
        for r in group:
            r["ratio_vs_loop"] = r["tokens_per_s"] / loop["tokens_per_s"]
            r["output_identical_to_loop"] = (r["bin_sha256"], r["idx_sha256"]) == (loop["bin_sha256"],
                                                                                    loop["idx_sha256"])
    ratios = [r["ratio_vs_loop"] for r in runs if r["method"] == "workers=2"]
    growth = {m: max(r["peak_rss_mb"] for r in runs if r["method"] == m) /
              min(r["peak_rss_mb"] for r in runs if r["method"] == m) for m in methods}
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": list(os.getloadavg())},
        "repeat": args.repeat,
        "corpus": "bundled Jargon File blocks as jsonl, repeated to size",
        "tokenizer": Path(tokenizer).name,
        "runs": runs,
        "targets": {
            "two_workers_vs_loop": {"target": SPEEDUP_TARGET, "measured_min": min(ratios),
                                    "met": min(ratios) >= SPEEDUP_TARGET},
            "peak_memory_growth_largest_vs_smallest_input": {
                "limit": MEMORY_GROWTH_LIMIT, "measured": growth,
                "met": all(growth[m] <= MEMORY_GROWTH_LIMIT for m in methods if m != "loop")},
            "outputs_identical": all(r["output_identical_to_loop"] for r in runs),
        },
    }

    print(f"tokenize benchmark: {summary['corpus']}, tokenizer {summary['tokenizer']}, {os.cpu_count()} CPUs, "
          f"best of {args.repeat}; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"{'input':>8} {'method':<24} {'docs':>9} {'tokens':>11} {'seconds':>8} {'tokens/s':>11} "
          f"{'vs loop':>8} {'peak mem MB':>12}")
    for r in runs:
        print(f"{r['size_mb']:>6g}MB {LABELS[r['method']]:<24} {r['documents']:>9,} {r['tokens']:>11,} "
              f"{r['seconds']:>8.2f} {r['tokens_per_s']:>11,.0f} {r['ratio_vs_loop']:>7.2f}x {r['peak_rss_mb']:>12.1f}")
    t = summary["targets"]
    print(f"2 workers vs loop: {min(ratios):.2f}x at worst (target >= {SPEEDUP_TARGET}x): "
          f"{'met' if t['two_workers_vs_loop']['met'] else 'NOT met'}")
    print("peak memory, largest / smallest input: " + ", ".join(f"{LABELS[m]} {g:.3f}" for m, g in growth.items())
          + f" (vffn-data limit {MEMORY_GROWTH_LIMIT}): "
          + ("met" if t["peak_memory_growth_largest_vs_smallest_input"]["met"] else "NOT met"))
    print(f"outputs byte-identical across methods: {'yes' if t['outputs_identical'] else 'NO'}")
    if args.json:
        for r in runs:
            r.pop("bin_sha256")
            r.pop("idx_sha256")
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
