"""Run a command-line tool's real entry point in this process, the way a user's shell would, and collect its
exit status and output."""

from __future__ import annotations

import importlib
import signal
import sys
from dataclasses import dataclass

# Each tool's console script (pyproject.toml) and whether its main() takes argv or reads sys.argv.
ENTRY_POINTS = {
    "vffn-pretrain": ("vffn_pretrain.train", "main", False),
    "vffn-data": ("data_tools.cli", "main", True),
    "vffn-info": ("vffn_pretrain.info", "main", False),
    "vffn-generate": ("vffn_pretrain.generate", "main", True),
    "vffn-scaling": ("vffn_pretrain.scaling.cli", "main", True),
}


@dataclass
class Outcome:
    code: int
    out: str

    def one_line_error(self, ignore_prefix: str | None = None) -> str:
        """The tool's error: its output must be one non-empty line, without a traceback (lines starting with
        `ignore_prefix`, progress the tool printed before the error, aside)."""
        assert "Traceback" not in self.out, self.out
        lines = [line for line in self.out.splitlines()
                 if line.strip() and not (ignore_prefix and line.startswith(ignore_prefix))]
        assert len(lines) == 1, self.out
        return lines[0]

    def error_line(self) -> str:
        """The last line, for tools whose usage errors come from argparse (a usage line, then the error)."""
        assert "Traceback" not in self.out, self.out
        lines = [line for line in self.out.splitlines() if line.strip()]
        assert 1 <= len(lines) <= 2 or "usage:" in lines[0], self.out
        return lines[-1]


def run_cli(tool: str, argv: list[str], capsys, monkeypatch) -> Outcome:
    module, name, takes_argv = ENTRY_POINTS[tool]
    main = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(sys, "argv", [tool, *argv])
    capsys.readouterr()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1,
                                                       signal.SIGUSR2, signal.SIGHUP)}
    try:
        code = main(argv) if takes_argv else main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:  # a tool's main owns its process's signals; here the process is the test session's
        from vffn_pretrain.training.signals import STOP

        STOP.restore()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    captured = capsys.readouterr()
    return Outcome(int(code or 0), captured.err + captured.out)
