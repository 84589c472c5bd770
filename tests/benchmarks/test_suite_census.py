"""benchmarks/suite_census.py: every Python process records itself through the hook, and the report sorts the
records by kind of process and by the test that started them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _census():
    spec = importlib.util.spec_from_file_location("suite_census", BENCHMARKS / "suite_census.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hook_records_a_process_a_forked_child_and_an_os_exit(tmp_path):
    log = tmp_path / "census.jsonl"
    code = ("import multiprocessing as mp, os\n"
            "def child():\n    sum(range(10**6))\n"
            "p = mp.get_context('fork').Process(target=child); p.start(); p.join()\n"
            "os._exit(0)\n")
    env = {**os.environ, "VFFN_CENSUS_LOG": str(log), "PYTEST_CURRENT_TEST": "tests/x.py::test_y (call)",
           "PYTHONPATH": str(BENCHMARKS / "suite_census_hook")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["multiprocessing_child"] for r in records) == [False, True]
    assert all(r["test"] == "tests/x.py::test_y (call)" and r["cpu_s"] >= 0 for r in records)


def test_the_report_sorts_processes_by_kind_and_test():
    census = _census()
    records = [
        {"argv": ["/r/vffn_pretrain/train.py", "model=tiny"], "cpu_s": 12.0, "test": "t.py::a (call)"},
        {"argv": ["/r/vffn_pretrain/train.py"], "cpu_s": 6.0, "test": "t.py::a (call)"},
        {"argv": ["-c"], "cpu_s": 60.0, "test": "", "multiprocessing_child": True},
        {"argv": ["/r/.venv/bin/vffn-data", "tokenize"], "cpu_s": 3.0, "test": "t.py::b (call)"},
        {"argv": ["/x/torch/distributed/run.py"], "cpu_s": 1.0, "test": "t.py::b (call)"},
        {"argv": ["-c"], "cpu_s": 30.0, "test": ""},  # an xdist worker
    ]
    rep = census.report(records, top=2)
    assert {row["kind"]: row["processes"] for row in rep["kinds"]} == {
        "multiprocessing child (rank pools, data workers)": 1, "pytest and its workers": 1,
        "trainer subprocess": 2, "tool subprocess": 1, "torchrun": 1}
    assert rep["kinds"][0]["kind"].startswith("multiprocessing") and rep["cpu_min"] == 112.0 / 60
    assert rep["tests"] == [{"test": "(none: session set-up or a worker)", "processes": 2, "cpu_s": 90.0},
                            {"test": "t.py::a", "processes": 2, "cpu_s": 18.0}]
