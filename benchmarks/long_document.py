"""Benchmark ``vffn-data tokenize`` on one very long document: peak memory and time.

Usage: ``python benchmarks/long_document.py [--size-mb 50] [--repeat 1] [--json] [--workdir DIR]``

The input is a single jsonl record whose text is the bundled Jargon File repeated to ``--size-mb`` MB (a long
"book": paragraphs, lines, spaces). It is tokenized with the bundled byte-level BPE by ``vffn-data tokenize
--workers 0`` (everything in one process, so the process's VmHWM is the whole peak), in a fresh process per
round. Reported: peak RSS, the child's CPU seconds (user + system, what the machine load does not inflate as
much as wall time) and wall seconds, tokens, and the load average. Compare against the same figures on a
checkout without piecewise encoding to see the effect (RESULTS.md keeps both).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from preprocess import _measure  # noqa: E402  (the same peak-memory sampling as the throughput benchmark)


def make_long_document(path: Path, size_mb: float) -> int:
    """Write one jsonl record of about ``size_mb`` MB of text; return the text's UTF-8 size."""
    from vffn_pretrain.data.assets import BUNDLED_CORPUS

    base = gzip.decompress(BUNDLED_CORPUS.read_bytes()).decode("utf-8")
    text = base * max(1, round(size_mb * 1e6 / len(base.encode("utf-8"))))
    path.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    return len(text.encode("utf-8"))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(input_path: Path, prefix: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "data_tools.cli", "tokenize", "--input", str(input_path), "--output-prefix",
           prefix, "--workers", "0", "--no-progress", "--overwrite", *extra]
    cpu0 = _children_cpu_s()
    done, peak_mb, wall = _measure(cmd)
    cpu = _children_cpu_s() - cpu0
    report = json.loads(Path(prefix + ".report.json").read_text())
    for suffix in (".bin", ".idx", ".report.json"):
        Path(prefix + suffix).unlink(missing_ok=True)
    return {"peak_rss_mb": round(peak_mb, 1), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "tokens": report["tokens"], "documents": report["documents"]["written"],
            "stderr": done.stderr.strip()[-500:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0, help="document size in MB [50]")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the largest peak and least CPU kept [1]")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON after the table")
    parser.add_argument("--workdir", default=None, help="where to write the input and output [a temp dir]")
    parser.add_argument("--tokenize-args", default="", help="extra vffn-data tokenize arguments, space-separated")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        input_path = Path(tmp) / "long.jsonl"
        size = make_long_document(input_path, args.size_mb)
        runs = [run_once(input_path, str(Path(tmp) / "out"), args.tokenize_args.split()) for _ in range(args.repeat)]
    result = {"document_bytes": size, "load_average_before": list(load_before),
              "load_average_after": list(os.getloadavg()), "cpus": os.cpu_count(),
              "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "cpu_s": min(r["cpu_s"] for r in runs),
              "wall_s": min(r["wall_s"] for r in runs), "tokens": runs[0]["tokens"],
              "documents": runs[0]["documents"], "runs": runs}
    print(f"long-document tokenize: one {size / 1e6:.1f} MB document, bundled BPE, --workers 0, "
          f"{args.repeat} round(s); load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"{'peak RSS MB':>12} {'CPU s':>8} {'wall s':>8} {'tokens':>12} {'MB/CPU s':>9}")
    print(f"{result['peak_rss_mb']:>12.1f} {result['cpu_s']:>8.2f} {result['wall_s']:>8.2f} {result['tokens']:>12,} "
          f"{size / 1e6 / max(result['cpu_s'], 1e-9):>9.2f}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
