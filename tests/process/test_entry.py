"""The console scripts handle Ctrl-C, SIGTERM and SIGHUP from their first instruction: a stop while the tool's
module is still being imported is one line and exit 130 (it was a KeyboardInterrupt traceback, or death by
SIGTERM with 143 and no line)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A tool whose module takes long to import: it says when it has started importing, then sleeps.
SLOW_TOOL = '''
import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("importing")
time.sleep(60)
def main():
    return 0
'''


@pytest.mark.parametrize("sig, line", [(signal.SIGINT, "slow-tool: interrupted"),
                                       (signal.SIGTERM, "slow-tool: interrupted by SIGTERM"),
                                       (signal.SIGHUP, "slow-tool: interrupted by SIGHUP")])
def test_a_stop_while_the_tool_is_imported_is_one_line_and_exit_130(tmp_path, sig, line):
    (tmp_path / "slow_tool.py").write_text(SLOW_TOOL)
    marker = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", "from vffn_pretrain.process.entry import run; "
                             "run('slow-tool', 'slow_tool:main')", str(marker)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.splitlines() == [line] and out == "", (proc.returncode, err)


def test_every_console_script_but_the_trainer_starts_through_the_entry_module():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.pop("vffn-pretrain") == "vffn_pretrain.train:cli"  # handles its signals itself (exit 3)
    assert scripts.pop("vffn-data") == "data_tools.entry:main"
    assert all(target.startswith("vffn_pretrain.process.entry:") for target in scripts.values()), scripts
    import vffn_pretrain.process.entry as entry

    for name, target in scripts.items():
        assert callable(getattr(entry, target.split(":")[1])), name
