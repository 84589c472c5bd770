"""Honest throughput: FLOPs per token from the model's real arithmetic, and MFU against a known peak only."""

from __future__ import annotations

import torch

# Dense bf16 peak FLOP/s per device (no sparsity). Unknown devices get no MFU rather than a guess: an A100
# fallback would overstate an H200's MFU about 3x.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
}


def device_peak_flops() -> tuple[str, float | None]:
    """(device name, peak bf16 FLOP/s or None when unknown or on CPU)."""
    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name.upper():
            return name, peak
    return name, None


def mfu(tflops_per_device: float, peak: float | None) -> float | str:
    return tflops_per_device * 1e12 / peak if peak else "unknown"
