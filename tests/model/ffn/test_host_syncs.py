"""No host synchronisation inside a layer's training step on a GPU (issue: GPU-path defects, finding 4).

A CPU run cannot see a CUDA sync, so these tests count the calls that would be one: reading a value to the host
(`.item()`, `.tolist()`, `int(t)`), `torch.tensor(...)` (a blocking host-to-device copy when given a device),
and ops whose output size depends on the data (`bincount`, `nonzero`, boolean-mask indexing, `unique`,
`masked_select`). The width path's form is set to the one a GPU uses (masked-dense)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tests.model.ffn.tiny_layers import D, make_ffn
from vffn_pretrain.model import noise
from vffn_pretrain.model.ffn import versatile

HOST_READS = {"tolist", "item", "tensor", "__int__", "__float__", "__bool__", "__index__"}
DATA_SIZED = {"aten::bincount", "aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim",
              "aten::unique_consecutive", "aten::_local_scalar_dense"}


class HostSyncCounter(TorchFunctionMode):
    """Records every call that would stall a CUDA stream (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self._dispatch = _DataSizedOps(self.calls)

    def __enter__(self):
        self._dispatch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._dispatch.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


class _DataSizedOps(TorchDispatchMode):
    def __init__(self, calls: list[str]):
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()))
        if name in DATA_SIZED or bool_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def training_step_syncs(kind: str, token_sparse: bool, monkeypatch) -> list[str]:
    monkeypatch.setattr(versatile, "width_path_form", lambda kind, tp, device: "masked_dense")
    mod = make_ffn(kind, setup=False, token_sparse_recursion=token_sparse, balance_coeff=0.05)
    mod.train()
    h = torch.randn(8, 2, D, requires_grad=True)
    noise.seed_microbatch(1, (0, 0))
    with HostSyncCounter() as counter:
        y, _ = mod(h)
        y.sum().backward()
    return counter.calls


@pytest.mark.parametrize("kind", ["versatile", "depth_only", "width_only", "kloop"])
def test_all_token_training_step_has_no_host_sync(single_rank, monkeypatch, kind):
    assert training_step_syncs(kind, False, monkeypatch) == []


@pytest.mark.parametrize("kind", ["versatile", "depth_only"])
def test_token_sparse_step_syncs_once_for_the_loop_plan(single_rank, monkeypatch, kind):
    # the per-loop row counts fix the shapes of the loops: one read per layer and micro-batch, by design
    assert training_step_syncs(kind, True, monkeypatch) == ["tolist"]


def test_the_counter_sees_syncs(single_rank):
    x = torch.arange(6)
    with HostSyncCounter() as counter:
        torch.bincount(x)
        x.tolist()
        x[x > 2]
        torch.tensor(1.0)
    assert counter.calls == ["aten::bincount", "tolist", "aten::index", "tensor"]
