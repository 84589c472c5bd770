"""The console scripts' first instructions: a stop signal is one line and exit 130 from the moment they start.

A tool's `main` handles Ctrl-C, SIGTERM and SIGHUP once it runs (`interrupts.interruptible()`), but Python has
to import the tool's module first (for some, a few hundred milliseconds), and a signal in that window gave a
KeyboardInterrupt traceback (Ctrl-C) or a silent death with 143/129 (SIGTERM, SIGHUP). `run` installs the
handlers before it imports the tool, and reports a stop that reaches it as the tools do. The trainer is not run
this way: SIGTERM asks it to save and be requeued (exit 3), which it handles from its own first line.
"""

from __future__ import annotations

import importlib
import sys
from functools import partial

from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible


def run(prog: str, target: str) -> None:
    """Import `target` ("package.module:function") and call it with no arguments, exiting with what it returns;
    a stop signal while it is imported or runs exits 130 with one line."""
    try:
        with interruptible():
            module, function = target.split(":")
            status = getattr(importlib.import_module(module), function)()
    except KeyboardInterrupt as stop:
        print(f"{prog}: {interrupted(stop)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(status)


# The console scripts of pyproject.toml (vffn-data's is data_tools/entry.py: the library does not name its tools).
info = partial(run, "vffn-info", "vffn_pretrain.info:main")
plan = partial(run, "vffn-plan", "vffn_pretrain.planning.cli:main")
generate = partial(run, "vffn-generate", "vffn_pretrain.generate:main")
export = partial(run, "vffn-export", "vffn_pretrain.export.cli:main")
evaluate = partial(run, "vffn-eval", "vffn_pretrain.evaluation.cli:main")
study = partial(run, "vffn-study", "vffn_pretrain.study.cli:main")
scaling = partial(run, "vffn-scaling", "vffn_pretrain.scaling.cli:main")
