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
