"""How the run computes: the parameters' number format (system.precision) and deterministic kernels
(system.deterministic). Read by the trainer and by `vffn-plan calibrate`, which must time what training runs."""

from __future__ import annotations

import os

import torch


def params_dtype(precision: str) -> torch.dtype:
    """system.precision -> the parameters' dtype: auto is bf16 on a GPU, fp32 on a CPU. bf16 keeps fp32 main
    weights in the optimizer."""
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def use_deterministic_kernels() -> None:
    """system.deterministic: every kernel that has a deterministic form uses it, so two runs of the same config
    compute the same bits (torch's deterministic algorithms, warning where an op has none; cuBLAS's fixed
    workspace; transformer-engine's deterministic attention). Call before the first CUDA kernel: cuBLAS reads its
    setting when it starts."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] = "0"
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
