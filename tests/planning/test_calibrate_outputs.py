"""`vffn-plan calibrate`'s --out and its stop signals (issue 23, classes 2, 3 and 5).

| class | case | what the user sees |
|---|---|---|
| 2 | --out an existing file that is not a calibration | exit 2, one line; the file intact |
| 2 | --out inside the config directory it reads | exit 2, one line; nothing written there |
| 3 | --out being written by another live calibrate | exit 1, "is in use by PID" |
| 5 | SIGTERM while the sharing workers run | exit 130, one line, no file, no worker left |
| 5 | kill -9 while the sharing workers run | no worker left, no file (a stale lock the next run takes over) |
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.faults.processes import children, wait_until_gone
from tests.planning.test_calibrate import TINY, _calibrate
from vffn_pretrain.config.paths import CONF_DIR


def test_out_is_checked_before_anything_is_measured(tmp_path):
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    out = _calibrate(tmp_path, "--out", "notes.json", *TINY)
    assert out.returncode == 2 and "is not a calibration file" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'
    inside = CONF_DIR / "model" / "cal.json"
    out = _calibrate(tmp_path, "--out", str(inside), *TINY)
    assert out.returncode == 2 and f"lies inside the config directory {CONF_DIR}" in out.stderr
    assert not inside.exists() and not inside.with_name("cal.json.lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "cal.json.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        out = _calibrate(tmp_path, "--out", "cal.json", *TINY)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1 and f"is in use by PID {holder.pid} on this host" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_stopped_calibration_leaves_no_worker_and_no_file(tmp_path, sig):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "vffn_pretrain.planning.cli", "calibrate", "--out", "cal.json",
                             "--rounds", "1", "--no-p2p", "--shared-ranks", "2", "--sharing-seconds", "120", *TINY],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:  # the sharing workers have started
            time.sleep(0.5)
        workers = children(proc.pid)
        assert len(workers) >= 2, "the sharing workers never started"
        time.sleep(1)
        proc.send_signal(sig)  # the calibration alone, not its group: the workers must follow by themselves
        _, err = proc.communicate(timeout=120)
        for pid in workers:
            assert not wait_until_gone(pid, 30), f"worker {pid} outlived the calibration"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == "vffn-plan calibrate: interrupted by SIGTERM; cal.json was not written"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cal.json"))
    # kill -9 cannot remove the lock: the next calibrate takes it over (its PID is gone)
    assert left == ([] if sig == signal.SIGTERM else ["cal.json.lock"])
