"""Importing megatron-core does not load the compiler: its fused functions are compiled on their first call.

megatron-core 0.16.1 decorates about 50 small fused functions (bias + GeLU, SwiGLU, rotary embeddings, ...) with
``megatron.core.jit.jit_fuser``, which is ``torch.compile`` on torch >= 2.2. Calling ``torch.compile`` imports
TorchDynamo and Inductor and builds a wrapper per function: about 4 s of every process's start-up on a CPU core,
a third of a small trainer run, although a CPU run calls none of these functions and a GPU run compiles each one
only on its first call anyway. `install()` (called when the package is imported, before anything imports
megatron-core) arranges that, once ``megatron.core.jit`` is loaded, its ``jit_fuser`` is a wrapper that applies
the original decorator on the function's first call: the same decorator, with the same arguments, compiled at
the same moment (the first call); only the import is deferred. Nothing here imports torch or megatron-core.

(megatron-core also imports wandb at import, about 1.5 s; ``importlib.util.LazyLoader`` cannot defer it on
Python 3.11, whose import statement reads the module's ``__spec__`` and so loads it at the second
``import wandb``.)
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

JIT_MODULE = "megatron.core.jit"


def deferred(decorator):
    """``decorator`` (a ``torch.compile``-like callable: ``decorator(fn)`` or ``decorator(**options)(fn)``)
    applied to a function on that function's first call."""

    @functools.wraps(decorator)
    def defer(fn=None, **options):
        if fn is None:
            return lambda f: defer(f, **options)
        decorated = None

        @functools.wraps(fn)
        def call(*args, **kwargs):
            nonlocal decorated
            if decorated is None:
                decorated = decorator(fn, **options)
            return decorated(*args, **kwargs)

        return call

    return defer


class _DeferJitFuser(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.jit_fuser = deferred(module.jit_fuser)


class _JitFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != JIT_MODULE:
            return None
        sys.meta_path.remove(self)  # find the real module with the other finders; it is loaded once
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferJitFuser(spec.loader)
        return spec


def install() -> None:
    """Defer megatron-core's compilation (once per process; a no-op once ``megatron.core.jit`` is loaded)."""
    if JIT_MODULE in sys.modules or any(isinstance(f, _JitFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _JitFinder())
