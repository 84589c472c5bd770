"""The device audit (vffn_pretrain/testing/device_audit.py) tells host tensors from device tensors on a CPU."""

from __future__ import annotations

import numpy as np
import torch

from vffn_pretrain.testing.device_audit import device_audit, is_host


def test_host_and_device_tensors_are_told_apart():
    cpu = torch.device("cpu")
    with device_audit(cpu) as audit:
        host = torch.tensor([1.0, 2.0])
        placed = torch.tensor([1.0, 2.0], device=cpu)
        assert is_host(host) and not is_host(placed)
        assert is_host(host * 2) and is_host(torch.arange(3)) and is_host(torch.tensor(np.ones(2)))
        assert not is_host(placed + host)  # a device tensor decides where the result lives
        assert not is_host(host.to(cpu)) and is_host(host.to(torch.float64))
        assert is_host(placed.cpu()) and not is_host(placed)
        assert not is_host(torch.zeros_like(placed)) and is_host(torch.zeros_like(host))
        probs = torch.softmax(placed, -1)
        torch.multinomial(probs.cpu(), 1, generator=torch.Generator().manual_seed(0))
        torch.multinomial(probs, 1, generator=torch.Generator(device=cpu).manual_seed(0))
        assert audit.violations == []
        torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0))
    assert audit.violations == ["multinomial: a generator made without a device samples a device tensor"]
    assert torch.Generator is torch._C.Generator  # restored


def test_module_inputs_are_checked():
    cpu = torch.device("cpu")
    layer = torch.nn.Linear(2, 2)
    with device_audit(cpu, check_modules=True) as audit:
        layer(torch.ones(1, 2, device=cpu))
        assert audit.violations == []
        layer(torch.ones(1, 2))
    assert len(audit.violations) == 1 and audit.violations[0].startswith("Linear.forward: a host tensor (1, 2)")
