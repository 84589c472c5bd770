"""vffn-scaling's --out (issue 23, classes 2 and 3): never over a summary.json it reads, one writer at a time,
files written whole.

| class | case | what the user sees |
|---|---|---|
| 2 | --out = a run directory of the sweep / its summary.json / the sweep itself | exit 2, "contains" / "is"; summaries intact |
| 3 | --out being written by another live vffn-scaling | exit 1, "is in use by PID" |
| 2 | a killed run's partial plot | removed by the next run |
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from tests.scaling.test_scaling import write_ladder
from vffn_pretrain.scaling.cli import main


def _sweep(tmp_path):
    write_ladder(tmp_path / "sweep", "dense", 1.0, lambda c: 1e3 * c**-0.2 + 1.5, depth=0)
    return tmp_path / "sweep"


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_over_a_summary_it_reads_is_refused(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    run = sweep / "dense" / "n1000000"
    before = {p: p.read_bytes() for p in sweep.rglob("summary.json")}
    for out, how in ((run, "contains"), (run / "summary.json", "is"), (sweep, "contains")):
        assert main([str(sweep), "--out", str(out)]) == 2
        assert f"--out {out} {how} the summary" in _error(capsys)
    assert {p: p.read_bytes() for p in sweep.rglob("summary.json")} == before
    assert sorted(p.name for p in run.iterdir()) == ["summary.json"]


def test_a_second_writer_is_refused_and_a_stale_partial_removed(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    out = tmp_path / "fits"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "fits.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        assert main([str(sweep), "--out", str(out)]) == 1
        assert f"is in use by PID {holder.pid} on this host" in _error(capsys)
    finally:
        holder.kill()
        holder.wait()
    out.mkdir()
    stale = out / f"loss_vs_params.png.partial-{holder.pid}"
    stale.write_text("half a picture")
    assert main([str(sweep), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["loss_vs_compute.png", "loss_vs_params.png",
                                                      "scaling_fits.json"]
    assert not (tmp_path / "fits.lock").exists()
