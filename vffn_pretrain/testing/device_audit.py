"""Catch, on a CPU, the device mistakes that only crash on a GPU.

On a CPU-only machine every tensor is on the CPU, so a tensor created without `device=` looks exactly like one
created on the rank's device, and a collective handed it works under gloo. On a GPU the first one is a CPU tensor:
NCCL rejects it, the embedding refuses CPU ids, a CPU generator cannot sample CUDA probabilities. This audit marks
such tensors while code runs and reports where they reach a collective, a module or a sampler:

* **host tensors** are those that stay on the CPU whatever the rank's device is: made by a factory (`torch.tensor`,
  `torch.zeros`, `torch.arange`, ...) without a `device`, by `.cpu()`, or computed only from host tensors
  (`torch.from_numpy` is not seen: torch does not route it through function modes). `.to(device)` / `.cuda()` and factories given a `device` make device tensors.
* every tensor handed to a torch.distributed collective must be a device tensor, on `expected_device`, and the
  call must come from the main thread (the CUDA current device is per thread: only the main thread has the
  rank's GPU selected);
* a generator made without a device (`torch.Generator()`, a CPU generator on any machine) may only sample host
  tensors: on a GPU the probabilities would be CUDA tensors;
* with `check_modules=True`, every tensor an `nn.Module` is called with must be a device tensor.

Use: `with device_audit(torch.device("cpu")) as audit: ...; assert not audit.violations, audit.violations`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_TAG = "_vffn_host_tensor"
_FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
              torch.linspace, torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
              torch.empty_strided, torch.scalar_tensor}
_ALWAYS_HOST = {torch.Tensor.cpu}
_PLACED = {torch.Tensor.to, torch.Tensor.cuda}
COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter", "send", "recv",
               "isend", "irecv", "barrier", "all_gather_object", "broadcast_object_list", "gather_object",
               "scatter_object_list")


def is_host(t: torch.Tensor) -> bool:
    return bool(getattr(t, _TAG, False))


class _AuditedGenerator(torch.Generator):
    """torch.Generator that remembers whether it was given a device (stands in for it during the audit)."""

    def __new__(cls, device=None):
        gen = super().__new__(cls) if device is None else super().__new__(cls, device)
        setattr(gen, _TAG, device is None)
        return gen

    def __init__(self, device=None):
        pass


def _tensors(*trees) -> list[torch.Tensor]:
    return [x for tree in trees for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]


@dataclass
class Audit:
    expected_device: torch.device
    violations: list[str] = field(default_factory=list)
    collectives: list[str] = field(default_factory=list)  # the name of every collective called, in order

    def check_tensors(self, where: str, tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            if is_host(t):
                self.violations.append(f"{where}: a host tensor {tuple(t.shape)} {t.dtype} (created without the "
                                       "rank's device)")
            elif t.device != self.expected_device:
                self.violations.append(f"{where}: a tensor on {t.device}, expected {self.expected_device}")


class _HostTensorMode(TorchFunctionMode):
    def __init__(self, audit: Audit):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _ALWAYS_HOST or func in _PLACED:
            if out is args[0]:  # already where asked: an alias to (un)mark, where a GPU would return a copy
                out = out.view_as(out)
        inputs = _tensors(args, kwargs)
        generator = kwargs.get("generator")
        if getattr(generator, _TAG, False) and any(not is_host(t) for t in inputs):
            self.audit.violations.append(f"{getattr(func, '__name__', func)}: a generator made without a device "
                                         "samples a device tensor")
        if func in _FACTORIES:
            host = kwargs.get("device") is None and not (inputs and not all(map(is_host, inputs)))
        elif func in _ALWAYS_HOST:
            host = True
        elif func in _PLACED:
            explicit = "device" in kwargs or any(isinstance(a, (str, torch.device, int, torch.Tensor))
                                                 for a in args[1:])
            host = not explicit and bool(inputs) and is_host(inputs[0])
        else:
            host = bool(inputs) and all(map(is_host, inputs))
        if host:
            seen = {id(t) for t in inputs}
            for t in _tensors(out):
                if id(t) not in seen:  # an in-place result keeps its own mark
                    setattr(t, _TAG, True)
        return out


_state = threading.local()


def _wrap(name: str, fn, audit: Audit):
    def audited(*args, **kwargs):
        if getattr(_state, "inside", False):  # e.g. all_gather inside all_gather_object: not the caller's
            return fn(*args, **kwargs)
        audit.collectives.append(name)
        if threading.current_thread() is not threading.main_thread():
            audit.violations.append(f"{name}: called from thread {threading.current_thread().name!r}, not the "
                                    "main thread (the CUDA current device is per thread)")
        audit.check_tensors(name, _tensors(args, kwargs))
        _state.inside = True
        try:
            return fn(*args, **kwargs)
        finally:
            _state.inside = False

    return audited


@contextlib.contextmanager
def device_audit(expected_device: torch.device, check_modules: bool = False) -> Iterator[Audit]:
    audit = Audit(torch.device(expected_device))
    originals = {name: getattr(c10d, name) for name in COLLECTIVES}
    hook = None
    if check_modules:
        def pre_hook(module, args):
            audit.check_tensors(f"{type(module).__name__}.forward", _tensors(args))

        hook = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    try:
        for name, fn in originals.items():
            wrapped = _wrap(name, fn, audit)
            setattr(c10d, name, wrapped)
            setattr(dist, name, wrapped)
        torch.Generator = _AuditedGenerator
        with _HostTensorMode(audit):
            yield audit
    finally:
        torch.Generator = _AuditedGenerator.__base__
        for name, fn in originals.items():
            setattr(c10d, name, fn)
            setattr(dist, name, fn)
        if hook is not None:
            hook.remove()
