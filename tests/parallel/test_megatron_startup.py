"""Importing megatron-core loads neither the compiler nor wandb; both work when used."""

from __future__ import annotations

import os
import subprocess
import sys

from vffn_pretrain.parallel.megatron_startup import deferred

IMPORT_MEGATRON = r"""
import sys
import vffn_pretrain
import megatron.core.jit as jit
import torch
from megatron.core.fusions import fused_bias_swiglu
from megatron.core import timers
loaded = sorted(m for m in ("torch._dynamo", "torch._inductor.compile_fx", "wandb.sdk") if m in sys.modules)
assert not loaded, f"megatron-core's import loaded {loaded}"
assert jit.jit_fuser.__wrapped__ is torch.compile, jit.jit_fuser
x = torch.randn(4, 6)
assert torch.equal(fused_bias_swiglu.swiglu(x), torch.nn.functional.silu(x[:, :3]) * x[:, 3:])
import wandb
assert "wandb.sdk" not in sys.modules
assert callable(wandb.init) and "wandb.sdk" in sys.modules  # its code ran on first use
assert timers.wandb is wandb and type(wandb).__name__ == "module"
from wandb.sdk import wandb_init
print("ok")
"""


def test_importing_megatron_core_loads_neither_the_compiler_nor_wandb_until_used():
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCHDYNAMO_DISABLE": "1"}  # the call runs eagerly
    proc = subprocess.run([sys.executable, "-c", IMPORT_MEGATRON], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_decorator_is_applied_once_on_the_first_call_with_its_options():
    applied = []

    def decorator(fn, **options):
        applied.append((fn.__name__, options))
        return lambda *a, **k: ("decorated", fn(*a, **k))

    def add(a, b=1):
        return a + b

    for wrapped, options in ((deferred(decorator)(add), {}), (deferred(decorator)(mode="max")(add), {"mode": "max"})):
        applied.clear()
        assert wrapped.__name__ == "add" and applied == []  # nothing happens at decoration
        assert wrapped(2, b=3) == ("decorated", 5)
        assert wrapped(1) == ("decorated", 2)
        assert applied == [("add", options)]  # once, with the decorator's options


LAZY_PACKAGE = r"""
import sys
from pathlib import Path
from vffn_pretrain.parallel import megatron_startup

root = Path(sys.argv[1])
sys.path.insert(0, str(root))
sys.meta_path.insert(0, megatron_startup._StartupFinder({"lazypkg", "brokenpkg"}))
runs = lambda: (root / "runs.txt").read_text().split()

import lazypkg
assert runs() == [], runs()  # imported, not run
import lazypkg.sdk  # a submodule first: the package's own code runs first, as in a plain import
assert runs() == ["lazypkg", "lazypkg.sdk"], runs()  # each once
assert lazypkg.sdk.seen == "1.0" and lazypkg.__version__ == "1.0" and type(lazypkg).__name__ == "module"

import brokenpkg
for attempt in range(2):  # the real error, each time
    try:
        brokenpkg.anything
    except ImportError as e:
        assert "no_such_thing" in str(e), e
    else:
        raise AssertionError("brokenpkg loaded")
print("ok")
"""


def test_a_lazy_package_runs_first_once_and_a_failure_repeats(tmp_path):
    """The wandb deferral's cases: a submodule imported before any attribute (wandb.sdk reads wandb.__version__
    while wandb's own code imports it) and a package whose code fails."""
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (tmp_path / "runs.txt").write_text("")
    log = f"open({str(tmp_path / 'runs.txt')!r}, 'a').write(__name__ + ' ')"
    (pkg / "__init__.py").write_text(f"{log}\n__version__ = '1.0'\nfrom lazypkg import sdk\n")
    (pkg / "sdk.py").write_text(f"{log}\nimport lazypkg\nseen = lazypkg.__version__\n")
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("from no_such_thing import x\n")
    proc = subprocess.run([sys.executable, "-c", LAZY_PACKAGE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


FIRST_CALL_TRACED = r"""
import torch
from vffn_pretrain.parallel.megatron_startup import deferred

compiled = []
def count(fn, **options):
    compiled.append(fn.__name__)
    return torch.compile(fn, **options)

inner = deferred(count)(backend="eager")(lambda x: x * 2)
inner.__name__ = "inner"

@torch.compile(backend="eager")
def outer(x):
    return inner(x) + 1

x = torch.ones(3)
assert torch.equal(outer(x), x * 2 + 1)
assert compiled == [], compiled  # traced from inside a compiled function: not decorated there
assert torch.equal(inner(x), x * 2) and compiled == ["<lambda>"], compiled  # the first eager call decorates
print("ok")
"""


def test_a_first_call_from_inside_a_compiled_function_leaves_the_decoration_for_later():
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL_TRACED], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
