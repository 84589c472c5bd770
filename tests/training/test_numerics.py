"""system.precision and system.deterministic: the parameters' dtype per setting and device, and what the
deterministic switch turns on (before the first CUDA kernel: cuBLAS reads its workspace setting at start-up)."""

from __future__ import annotations

import os

import pytest
import torch

from vffn_pretrain.training.numerics import params_dtype, use_deterministic_kernels


def test_params_dtype(monkeypatch):
    assert params_dtype("fp32") == torch.float32 and params_dtype("bf16") == torch.bfloat16
    assert params_dtype("auto") == torch.float32  # on this CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert params_dtype("auto") == torch.bfloat16 and params_dtype("fp32") == torch.float32


def test_deterministic_kernels(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("NVTE_ALLOW_NONDETERMINISTIC_ALGO", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        use_deterministic_kernels()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert os.environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "0"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def test_deterministic_must_be_a_boolean():
    from vffn_pretrain.config.errors import ConfigError
    from vffn_pretrain.config.system import SystemConfig

    with pytest.raises(ConfigError, match="system.deterministic"):
        SystemConfig(deterministic="yes").validate()
