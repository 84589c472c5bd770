"""The JSON report written next to every output, and the skip bookkeeping that feeds it.

A report says what went in (inputs), what came out (documents read, written and skipped, with the reason and
the file and line of each skip), how (tokenizer identity: name, vocab size, hash) and how long it took. Only the
first ``MAX_SKIP_EXAMPLES`` skips are listed one by one; the per-reason counts are always complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections import Counter

REPORT_VERSION = 1
MAX_SKIP_EXAMPLES = 1000


class SkipLog:
    """Counts skipped records by reason and keeps the first few with their location."""

    def __init__(self, limit: int = MAX_SKIP_EXAMPLES):
        self.limit = limit
        self.by_reason: Counter[str] = Counter()
        self.examples: list[dict] = []

    def add(self, path: str, line: int, reason: str, detail: str) -> None:
        self.by_reason[reason] += 1
        if len(self.examples) < self.limit:
            self.examples.append({"file": path, "line": line, "reason": reason, "detail": detail})

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "by_reason": dict(sorted(self.by_reason.items())),
            "examples": self.examples,
            "examples_truncated": self.total > len(self.examples),
        }


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def base_report(command: str, argv: list[str] | None = None) -> dict:
    return {
        "report_version": REPORT_VERSION,
        "command": command,
        "argv": list(argv) if argv is not None else None,
        "started_at": now_iso(),
        "host": platform.node(),
        "python": sys.version.split()[0],
    }


def read_report(path: str | os.PathLike) -> dict | None:
    """The report at ``path``, or None if there is none or it cannot be parsed (or is not a JSON object)."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
