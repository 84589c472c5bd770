"""Importing megatron-core costs only what a run uses: its compiler and wandb load when first used.

Two things megatron-core 0.16.1 does at import take a third of a small trainer run's start-up on a CPU core:

- It decorates about 50 small fused functions (bias + GeLU, SwiGLU, rotary embeddings, ...) with
  ``megatron.core.jit.jit_fuser``, which is ``torch.compile`` on torch >= 2.2. Calling ``torch.compile``
  imports TorchDynamo and Inductor and builds a wrapper per function (about 4 s), although a CPU run calls none
  of these functions and a GPU run compiles each one only on its first call anyway. Here, once
  ``megatron.core.jit`` is loaded, its ``jit_fuser`` is a wrapper that applies the original decorator on the
  function's first call: the same decorator, with the same arguments, compiled at the same moment (the first
  call).
- Its inference context and timers ``import wandb`` for optional logging (about 1 s); the trainer uses wandb
  only with ``logging.wandb.enabled``. Here ``import wandb`` gives a module object at once whose code runs on
  the first access to one of its attributes (``wandb.init``), so whoever uses wandb gets the whole module.
  (The standard library's ``importlib.util.LazyLoader`` does not serve: on Python 3.11 the import statement
  itself reads ``__spec__`` through it and so loads the module at the second ``import wandb``.)

`install()` is called when the package is imported, before anything imports megatron-core. Nothing here imports
torch, megatron-core or wandb.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
import threading
import types

JIT_MODULE = "megatron.core.jit"
LAZY_MODULES = ("wandb",)


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


class _LoadOnFirstUse(types.ModuleType):
    """A module whose code has not run yet: the first attribute it lacks runs it (``__spec__``, ``__path__``
    and the other import attributes are set, so importing it again or importing its submodules does not)."""

    def __getattr__(self, name):
        with _lazy_lock:
            if type(self) is _LoadOnFirstUse:
                self.__class__ = types.ModuleType
                self.__spec__.loader.exec_module(self)
        return getattr(self, name)


_lazy_lock = threading.Lock()


class _LoadLater(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self._loader
        module.__class__ = _LoadOnFirstUse


class _StartupFinder(importlib.abc.MetaPathFinder):
    """Finds each module it handles once (with the finders after it), adapts its loader, then stands down."""

    def __init__(self, names):
        self.pending = set(names)

    def find_spec(self, name, path, target=None):
        if name not in self.pending:
            return None
        self.pending.discard(name)
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the other finders: this one no longer answers for `name`
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _DeferJitFuser(spec.loader) if name == JIT_MODULE else _LoadLater(spec.loader)
        return spec


def install() -> None:
    """Once per process; modules already imported are left as they are."""
    if any(isinstance(f, _StartupFinder) for f in sys.meta_path):
        return
    pending = {JIT_MODULE, *LAZY_MODULES} - set(sys.modules)
    if pending:
        sys.meta_path.insert(0, _StartupFinder(pending))
