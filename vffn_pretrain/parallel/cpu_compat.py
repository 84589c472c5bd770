"""Every shim megatron-core 0.16.1 needs to run on CPU with gloo, in one module.

`activate()` is called by `vffn_pretrain.parallel.init_distributed` (and by the test conftest). Nothing else in
the code base mentions the CPU. The shims, by name:

- ``current_device``: ``torch.cuda.current_device()`` returns ``cpu``.
- ``synchronize``: ``torch.cuda.synchronize()`` is a no-op.
- ``cuda_literals``: hard-coded ``device="cuda"``, ``.cuda()`` and ``Tensor.type() == 'torch.cuda.*'`` checks.
  Two implementations: ``targeted`` (default; a device-rewriting ``torch`` proxy in the few modules that hold
  literals, no per-op cost) and ``mode`` (a ``TorchFunctionMode`` that catches any literal and can trace the
  megatron-core file:line that hit it; the coverage test uses it to detect literals an upgrade adds).
- ``rng``: megatron's CUDA RNG tracker keeps CPU generator states instead (dropout and activation recompute).
- ``distopt_ckpt``: the distributed optimizer's checkpoint path is broken whenever neither transformer-engine
  nor apex is installed (native torch Adam with per-param ``step`` tensors). This one keys on their absence,
  not on CUDA's, so it is installed on GPU machines without TE/apex too.

Every shim except ``distopt_ckpt`` is installed only when ``torch.cuda.is_available()`` is false. Each can be
switched off by name (``activate(disable=...)`` or ``VFFN_CPU_COMPAT_DISABLE=rng,synchronize``) so that tests
can show what it covers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

MEGATRON_VERSION = "0.16.1"
SHIMS = ("current_device", "synchronize", "cuda_literals", "rng", "distopt_ckpt")

_active: set[str] = set()
_literal_mode: CudaLiteralMode | None = None
# How often each shim was used in this process (tests check every active shim is exercised).
HITS: Counter[str] = Counter()
# While tracing: megatron-core sites (file:line) whose literal the targeted proxy rewrote.
_targeted_trace: set[str] | None = None

# Modules of megatron-core 0.16.1 that build tensors with a hard-coded device="cuda"; the targeted variant
# gives each of them a `torch` proxy that rewrites the device. Sites (file:line) are listed in KNOWN_LITERAL_SITES.
TARGETED_MODULES = (
    "megatron.core.pipeline_parallel.schedules",  # total_num_tokens = torch.zeros(..., device="cuda")
    "megatron.core.optimizer.clip_grads",  # norm and overflow buffers
    "megatron.core.optimizer.optimizer",  # found_inf, _dummy_overflow_buf, _scale_one, _scale
    "megatron.core.optimizer.grad_scaler",  # scale tensors
    "megatron.core.utils",  # local l2 norm
    "megatron.core.distributed.param_and_grad_buffer",  # warm-up tensor
)

# Every megatron-core site (path below megatron/core, line) known to hit a CUDA literal on the code paths this
# project uses. The coverage test runs the smoke layouts under the `mode` variant with tracing and fails on any
# site not listed here, naming it: that is how an upgrade that adds a CUDA assumption shows up.
KNOWN_LITERAL_SITES = frozenset(
    {
        "pipeline_parallel/schedules.py:596",
        "pipeline_parallel/schedules.py:983",
        "pipeline_parallel/schedules.py:2138",
        "optimizer/clip_grads.py:90",
        "optimizer/clip_grads.py:103",
        "optimizer/clip_grads.py:115",
        "optimizer/clip_grads.py:167",
        "optimizer/clip_grads.py:174",
        "optimizer/clip_grads.py:207",
        "optimizer/optimizer.py:473",
        "optimizer/optimizer.py:481",
        "optimizer/optimizer.py:485",
        "optimizer/optimizer.py:671",
        "optimizer/optimizer.py:690",
        "optimizer/optimizer.py:907",
        "optimizer/grad_scaler.py:15",
        "optimizer/grad_scaler.py:88",
        "optimizer/grad_scaler.py:91",
        "optimizer/grad_scaler.py:94",
        "optimizer/distrib_optimizer.py:361",
        "optimizer/distrib_optimizer.py:420",
        "optimizer/distrib_optimizer.py:582",
        "optimizer/distrib_optimizer.py:1089",
        "utils.py:1207",
        "distributed/param_and_grad_buffer.py:768",
        "models/common/language_module/language_module.py:244",
    }
)

log = logging.getLogger(__name__)


def _have_te_or_apex() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return bool(distrib_optimizer.HAVE_APEX_OR_TE)


def needs_cpu_shims() -> bool:
    return not torch.cuda.is_available()


def active() -> frozenset[str]:
    """Names of the shims installed in this process."""
    return frozenset(_active)


def activate(disable: Iterable[str] = (), literals: str | None = None) -> frozenset[str]:
    """Install the shims this process needs; idempotent. Returns the names of the active shims.

    ``literals`` picks the cuda_literals variant: ``targeted`` (default) or ``mode``; the environment variable
    ``VFFN_CPU_COMPAT_LITERALS`` sets the default. ``disable`` (or ``VFFN_CPU_COMPAT_DISABLE``, comma-separated)
    names shims to leave out.
    """
    import megatron.core

    if megatron.core.__version__ != MEGATRON_VERSION:
        raise RuntimeError(
            f"vffn_pretrain.parallel.cpu_compat patches private names of megatron-core {MEGATRON_VERSION}, "
            f"found {megatron.core.__version__}: re-run tests/parallel/test_cpu_compat.py and update the shims."
        )
    disabled = set(disable) | {s for s in os.environ.get("VFFN_CPU_COMPAT_DISABLE", "").split(",") if s}
    unknown = disabled - set(SHIMS)
    if unknown:
        raise ValueError(f"unknown cpu_compat shim(s) {sorted(unknown)}; known: {SHIMS}")
    literals = literals or os.environ.get("VFFN_CPU_COMPAT_LITERALS", "targeted")
    if literals not in ("targeted", "mode"):
        raise ValueError(f"VFFN_CPU_COMPAT_LITERALS must be 'targeted' or 'mode', got {literals!r}")

    wanted = []
    if needs_cpu_shims():
        wanted += ["current_device", "synchronize", "cuda_literals", "rng"]
    if not _have_te_or_apex():
        wanted.append("distopt_ckpt")
    installers = {
        "current_device": _install_current_device,
        "synchronize": _install_synchronize,
        "cuda_literals": functools.partial(_install_cuda_literals, literals),
        "rng": _install_rng,
        "distopt_ckpt": _install_distopt_ckpt,
    }
    for name in wanted:
        if name in disabled or name in _active:
            continue
        installers[name]()
        _active.add(name)
    return active()


# --------------------------------------------------------------------------------------------------------------
# current_device and synchronize
# Sites: utils.py:631 (GlobalMemoryBuffer), p2p_communication.py:190-202,313,321 (receive buffers),
# distributed/param_and_grad_buffer.py:783,800,806, optimizer/distrib_optimizer.py:791,1077,
# dist_checkpointing/strategies/state_dict_saver.py:252, and ~40 others where it is only used as `device=`.


def _install_current_device() -> None:
    def current_device():
        HITS["current_device"] += 1
        return torch.device("cpu")

    torch.cuda.current_device = current_device


def _install_synchronize() -> None:
    # p2p_communication.py:242,398 (after batch_isend_irecv, every PP>1 run) and
    # dist_checkpointing/strategies/filesystem_async.py:230.
    def synchronize(device=None):
        HITS["synchronize"] += 1

    torch.cuda.synchronize = synchronize


# --------------------------------------------------------------------------------------------------------------
# cuda_literals


def _to_cpu_device(device):
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, int):  # a CUDA ordinal
        return "cpu"
    return device


_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like")


class _CpuTorch:
    """Stands in for `torch` inside a megatron-core module: factories get device="cuda" rewritten to cpu."""

    def __init__(self):
        for name in _FACTORIES:
            fn = getattr(torch, name)

            @functools.wraps(fn)
            def factory(*args, _fn=fn, **kwargs):
                if "device" in kwargs:
                    dev = _to_cpu_device(kwargs["device"])
                    if dev is not kwargs["device"]:
                        HITS["cuda_literals"] += 1
                        if _targeted_trace is not None:
                            _targeted_trace.add(_megatron_site())
                    kwargs["device"] = dev
                return _fn(*args, **kwargs)

            setattr(self, name, factory)

    def __getattr__(self, name):
        return getattr(torch, name)


_orig_tensor_cuda = torch.Tensor.cuda
_orig_tensor_type = torch.Tensor.type


def _cpu_tensor_cuda(self, *args, **kwargs):
    # language_module.py:244 (tied embeddings with PP>1), distrib_optimizer.py:1089, grad_scaler.py:140.
    HITS["cuda_literals"] += 1
    return self


def _cuda_named_type(self, dtype=None, non_blocking=False, **kwargs):
    # clip_grads.py:167, optimizer.py:671,690, distrib_optimizer.py:361,420,582 assert 'torch.cuda.*Tensor'.
    if dtype is None and not kwargs:
        name = _orig_tensor_type(self)
        if self.device.type != "cpu" or name.startswith("torch.cuda."):
            return name
        HITS["cuda_literals"] += 1
        return name.replace("torch.", "torch.cuda.", 1)
    return _orig_tensor_type(self, dtype, non_blocking, **kwargs)


def _install_cuda_literals(variant: str) -> None:
    global _literal_mode
    if variant == "mode":
        _literal_mode = CudaLiteralMode()
        _literal_mode.__enter__()
        return
    import importlib

    proxy = _CpuTorch()
    for modname in TARGETED_MODULES:
        importlib.import_module(modname).torch = proxy
    torch.Tensor.cuda = _cpu_tensor_cuda
    torch.Tensor.type = _cuda_named_type


class CudaLiteralMode(TorchFunctionMode):
    """Rewrites any CUDA literal to the CPU, for every torch call on this thread.

    With ``trace=True`` it records, for each rewrite, the innermost megatron-core ``file:line`` on the stack
    (relative to ``megatron/core``) in ``self.sites``. It costs 15-20% per op, so it serves coverage checks.
    """

    def __init__(self, trace: bool = False):
        super().__init__()
        self.trace = trace
        self.sites: set[str] = set()

    def _record(self):
        HITS["cuda_literals"] += 1
        if self.trace:
            self.sites.add(_megatron_site())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            self._record()
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # With the targeted variant installed, `func` is already its patched `type` (torch dispatches
            # methods by name): do not prefix twice.
            name = func(*args)
            if args[0].device.type == "cpu" and not name.startswith("torch.cuda."):
                self._record()
                return name.replace("torch.", "torch.cuda.", 1)
            return name
        if func is torch.Tensor.to:
            new_args = tuple(_to_cpu_device(a) if isinstance(a, (str, torch.device)) else a for a in args)
            if new_args != args:
                self._record()
                args = new_args
        if "device" in kwargs:
            dev = _to_cpu_device(kwargs["device"])
            if dev is not kwargs["device"]:
                self._record()
                kwargs["device"] = dev
        return func(*args, **kwargs)


def _megatron_site() -> str:
    """The innermost megatron-core frame on the stack, as 'path/below/megatron/core.py:line'."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace(os.sep, "/")
        if "/megatron/core/" in path:
            return f"{path.split('/megatron/core/', 1)[1]}:{frame.lineno}"
    return "<outside megatron-core>"


@dataclass
class LiteralTrace:
    targeted: set[str]  # sites the targeted proxy rewrote (each must be in KNOWN_LITERAL_SITES)
    uncovered: set[str]  # sites only the tracing mode caught: the targeted variant would crash there


@contextlib.contextmanager
def trace_cuda_literals():
    """Trace CUDA literals in a block. A tracing `CudaLiteralMode` sits on top of the installed shims, so a
    literal the targeted variant misses is rewritten (the block runs on) and its file:line recorded."""
    global _targeted_trace
    trace = LiteralTrace(targeted=set(), uncovered=set())
    _targeted_trace = trace.targeted
    mode = CudaLiteralMode(trace=True)
    mode.sites = trace.uncovered
    try:
        with mode:
            yield trace
    finally:
        _targeted_trace = None


# --------------------------------------------------------------------------------------------------------------
# rng: megatron.core.tensor_parallel.random keeps "CUDA" generator states for dropout in model-parallel regions
# (CudaRNGStatesTracker.add at random.py:235, fork at random.py:250-277) and for activation recompute
# (_get_cuda_rng_state / _set_cuda_rng_state at random.py:446-457). On CPU the generator dropout uses is the CPU
# one, so the tracker keeps CPU states.


def _install_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        def add(self, name, seed):
            HITS["rng"] += 1
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    mrandom._get_cuda_rng_state = lambda device=None, clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    # A tracker built before activation would still be a CUDA one.
    mrandom.initialize_rng_tracker(force_reset=True)

    class _DropForkWarning(logging.Filter):
        # fork() warns when the CPU state changes inside it; on CPU that state *is* the tracked one.
        def filter(self, record):
            return "CPU RNG state changed" not in record.getMessage()

    logging.getLogger(mrandom.__name__).addFilter(_DropForkWarning())


# --------------------------------------------------------------------------------------------------------------
# distopt_ckpt: megatron.core.optimizer.distrib_optimizer with HAVE_APEX_OR_TE=False (torch Adam) in 0.16.1:
# (a) sharded_state_dict(is_loading=True) on a fresh optimizer asserts len(steps) == 1 (state_dict, :640-642);
# (b) _set_main_param_and_optimizer_states (:911-941) copies every state key, `step` included: a KeyError with
#     fully_reshardable, and the restored step overwritten with 0 with dp_reshardable;
# (c) that copy_ writes into fp32 main params that are views of leaf params requiring grad;
# (d) load_state_dict (:818-826) gives one shared `step` tensor to every param, which Adam then increments once
#     per param.


def _install_distopt_ckpt() -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig_sharded_state_dict = DistributedOptimizer.sharded_state_dict
    orig_load_state_dict = DistributedOptimizer.load_state_dict

    def _ensure_adam_state(opt: DistributedOptimizer) -> None:
        inner = opt.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @functools.wraps(orig_sharded_state_dict)
    def sharded_state_dict(self, model_sharded_state_dict=None, is_loading=False, sharding_type=None,
                           metadata=None):
        HITS["distopt_ckpt"] += 1
        if is_loading:
            _ensure_adam_state(self)  # (a)
        return orig_sharded_state_dict(self, model_sharded_state_dict or {}, is_loading, sharding_type, metadata)

    @torch.no_grad()  # (c)
    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        dst = {"param": main_param, **self.optimizer.state[main_param]}
        for key in ("param", "exp_avg", "exp_avg_sq"):  # (b): never `step`
            if key in tensors:
                dst[key].copy_(tensors[key])

    @functools.wraps(orig_load_state_dict)
    def load_state_dict(self, state_dict):
        orig_load_state_dict(self, state_dict)
        for state in self.optimizer.state.values():  # (d)
            if "step" in state:
                state["step"] = state["step"].detach().clone()

    DistributedOptimizer.sharded_state_dict = sharded_state_dict
    DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
    DistributedOptimizer.load_state_dict = load_state_dict


def _main() -> None:  # pragma: no cover - debugging aid
    print(sorted(activate()), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    _main()
