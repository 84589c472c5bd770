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
import os
import sys
import threading
import types

JIT_MODULE = "megatron.core.jit"
LAZY_MODULES = ("wandb",)


def deferred(decorator):
    """``decorator`` (``torch.compile`` or alike: ``decorator(fn)`` or ``decorator(**options)(fn)``) applied to a
    function on that function's first call outside compilation. A first call that TorchDynamo traces (from
    inside another compiled function) runs the function as it is: the enclosing graph compiles it, and a later
    eager call still gets the decorated one."""

    @functools.wraps(decorator)
    def defer(fn=None, **options):
        if fn is None:
            return lambda f: defer(f, **options)
        decorated = None

        @functools.wraps(fn)
        def call(*args, **kwargs):
            nonlocal decorated
            if decorated is None:
                torch = sys.modules.get("torch")
                if torch is not None and torch.compiler.is_compiling():
                    return fn(*args, **kwargs)
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
    """A module whose code has not run yet: the first attribute it lacks runs it (`_load`)."""

    def __getattr__(self, name):
        _load(self)
        if type(self) is _LoadOnFirstUse:  # its own code, still running, reads what it has not set yet
            raise AttributeError(f"partially initialized module {self.__name__!r} has no attribute {name!r}")
        return getattr(self, name)


_lazy_lock = threading.RLock()
os.register_at_fork(after_in_child=lambda: globals().update(_lazy_lock=threading.RLock()))


def _load(module: types.ModuleType) -> None:
    """Run a placeholder's code, once; other threads wait for the end. If the code fails, the placeholder stays
    (the next use tries again and gets the same error)."""
    with _lazy_lock:
        state = module.__dict__
        if type(module) is not _LoadOnFirstUse or state.get("_vffn_loading"):
            return
        state["_vffn_loading"] = True
        try:
            module.__spec__.loader.exec_module(module)
            module.__class__ = types.ModuleType
        finally:
            del state["_vffn_loading"]


class _LoadLater(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self._loader
        module.__class__ = _LoadOnFirstUse


class _AlreadyLoaded(importlib.abc.Loader):
    """The loader of a submodule that its package's code imported while the submodule's own import was under way
    (`import wandb.sdk` before any use of wandb). The import system, finding the module in sys.modules by then,
    loads what the module's ``__spec__`` says; so the module carries this loader's spec until the import has
    taken it, then its own again: the module runs once."""

    def __init__(self, module):
        self._module, self._own_spec = module, module.__spec__
        module.__spec__ = importlib.util.spec_from_loader(module.__name__, self)

    def create_module(self, spec):
        return self._module

    def module_spec(self):
        return self._module.__spec__

    def exec_module(self, module):
        module.__spec__ = self._own_spec


class _StartupFinder(importlib.abc.MetaPathFinder):
    """Adapts the loader of `megatron.core.jit` and of the lazy modules the first time each is found (with the
    finders after this one), and runs a lazy package's code before one of its submodules is imported, as a plain
    import would."""

    def __init__(self, names):
        self.pending = set(names)

    def find_spec(self, name, path, target=None):
        package = sys.modules.get(name.rpartition(".")[0])
        if type(package) is _LoadOnFirstUse:
            _load(package)
            if name in sys.modules:  # the package's code imported it
                return _AlreadyLoaded(sys.modules[name]).module_spec()
            return None
        if name not in self.pending:
            return None
        self.pending.discard(name)
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
