"""The published round-2 report is what `vffn-study report` computes from the published run records: a report
edited by hand, or records changed without the report written again, fail here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPRODUCTION = Path(__file__).resolve().parents[2] / "docs" / "reproduction"


def test_the_published_report_is_computed_from_the_published_records(tmp_path):
    study = tmp_path / "study"
    shutil.copytree(REPRODUCTION / "records", study)
    (study / "README.md").unlink()
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "vffn_pretrain.study.cli", "report", str(study), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    published = REPRODUCTION / "round2"
    assert json.loads((out / "report.json").read_text()) == json.loads((published / "report.json").read_text())
    assert (out / "report.md").read_text() == (published / "report.md").read_text()
    assert not json.loads((published / "report.json").read_text())["missing"]  # every seed of every run
