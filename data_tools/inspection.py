"""``vffn-data inspect``: what is in an indexed dataset.

Document and token counts, dtype, a histogram of document lengths (powers of two), and one decoded document.
The tokenizer used for decoding is ``--tokenizer`` or, failing that, the one named in the prefix's report.
``verify=True`` also recomputes the checksums of the files and compares them with the report, which catches
damage to the token data that the structural check on opening cannot see.
"""

from __future__ import annotations

import os

import numpy as np

from vffn_pretrain.data.hashing import sha256_file
from vffn_pretrain.data.prefix import bin_path, idx_path, report_path
from vffn_pretrain.data.report import read_report


def length_histogram(lengths: np.ndarray) -> list[dict]:
    """Counts of document lengths in buckets [1, 2), [2, 4), [4, 8), ... (and [0, 1) if present)."""
    if lengths.size == 0:
        return []
    buckets = np.zeros(lengths.size, dtype=np.int64)
    nonzero = lengths > 0
    buckets[nonzero] = np.floor(np.log2(lengths[nonzero])).astype(np.int64) + 1
    out = []
    for b, count in zip(*np.unique(buckets, return_counts=True)):
        lo, hi = (0, 1) if b == 0 else (1 << (b - 1), 1 << b)
        out.append({"min": int(lo), "max_exclusive": int(hi), "count": int(count)})
    return out


def _field(report: dict | None, key: str) -> dict | None:
    """`report[key]` when it is a JSON object (a hand-edited or damaged report may hold anything)."""
    value = (report or {}).get(key)
    return value if isinstance(value, dict) else None


def inspect_prefix(prefix: str, *, tokenizer: str | None = None, sample_index: int = 0,
                   sample_chars: int = 600, verify: bool = False) -> dict:
    """Describe ``prefix``; raises ``CorruptDatasetError`` if its files are damaged."""
    from vffn_pretrain.data.indexed import CorruptDatasetError, open_indexed_dataset
    from vffn_pretrain.data.tokenizer import build_tokenizer

    explicit = build_tokenizer(tokenizer) if tokenizer else None  # a bad --tokenizer is an error, not a note
    ds = open_indexed_dataset(prefix)
    lengths = np.asarray(ds.sequence_lengths, dtype=np.int64)
    doc_index = np.asarray(ds.document_indices)
    doc_lengths = np.add.reduceat(lengths, doc_index[:-1]) if len(doc_index) > 1 and lengths.size else lengths[:0]
    report = read_report(report_path(prefix))
    info: dict = {
        "prefix": os.path.abspath(prefix),
        "documents": int(len(doc_index) - 1),
        "sequences": int(lengths.size),
        "tokens": int(lengths.sum()),
        "dtype": np.dtype(ds.index.dtype).name,
        "document_length": {
            "min": int(doc_lengths.min()) if doc_lengths.size else 0,
            "mean": round(float(doc_lengths.mean()), 2) if doc_lengths.size else 0.0,
            "max": int(doc_lengths.max()) if doc_lengths.size else 0,
        },
        "length_histogram": length_histogram(doc_lengths),
        "report": report_path(prefix) if report else None,
        "tokenizer": _field(report, "tokenizer"),
    }
    if verify:
        if not _field(report, "output"):
            raise CorruptDatasetError(f"{report_path(prefix)}: no report with checksums to verify against")
        for kind, path in (("bin", bin_path(prefix)), ("idx", idx_path(prefix))):
            expected = report["output"].get(f"{kind}_sha256")
            if expected and sha256_file(path) != expected:
                raise CorruptDatasetError(f"{path}: checksum differs from the one in {report_path(prefix)} "
                                          f"(the file was modified or damaged)")
        info["verified"] = True

    spec = None if explicit else (_field(report, "tokenizer") or {}).get("spec")
    if info["documents"] and 0 <= sample_index < info["documents"]:
        first, last = int(doc_index[sample_index]), int(doc_index[sample_index + 1])
        ids = np.concatenate([ds[i] for i in range(first, last)]) if last > first else np.zeros(0, np.int64)
        sample = {"document": sample_index, "tokens": int(ids.size), "ids_head": ids[:32].tolist()}
        if explicit or spec:
            try:
                text = (explicit or build_tokenizer(spec)).detokenize(ids.tolist())
                sample["text"] = text[:sample_chars] + ("…" if len(text) > sample_chars else "")
            except (ValueError, OSError) as err:
                sample["text_error"] = f"cannot load tokenizer {spec!r}: {err}"
        info["sample"] = sample
    return info


def format_inspect(info: dict) -> str:
    """Human-readable rendering of ``inspect_prefix``'s result."""
    tok = info.get("tokenizer") or {}
    lines = [
        f"prefix     {info['prefix']}",
        f"documents  {info['documents']:,}   sequences {info['sequences']:,}",
        f"tokens     {info['tokens']:,}   dtype {info['dtype']}",
        f"doc length min {info['document_length']['min']:,}  mean {info['document_length']['mean']:,}  "
        f"max {info['document_length']['max']:,}",
    ]
    if tok:
        lines.append(f"tokenizer  {tok.get('name')}  vocab {tok.get('vocab_size')}  sha256 {str(tok.get('hash'))[:16]}…")
    if info.get("verified"):
        lines.append("checksums  match the report")
    hist = info["length_histogram"]
    if hist:
        lines.append("document length histogram (tokens):")
        top = max(h["count"] for h in hist)
        for h in hist:
            bar = "#" * max(1, round(40 * h["count"] / top))
            lines.append(f"  [{h['min']:>7,}, {h['max_exclusive']:>7,})  {h['count']:>9,}  {bar}")
    sample = info.get("sample")
    if sample:
        lines.append(f"sample: document {sample['document']} ({sample['tokens']} tokens), first ids {sample['ids_head']}")
        if "text" in sample:
            lines.append("-" * 60)
            lines.append(sample["text"])
            lines.append("-" * 60)
        elif "text_error" in sample:
            lines.append(sample["text_error"])
    return "\n".join(lines)
