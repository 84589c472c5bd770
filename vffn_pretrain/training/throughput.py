"""Honest throughput: FLOPs per token from the model's real arithmetic, and MFU against a known peak only.

The peak depends on the exact part, not just the chip: an H100 PCIe card runs at about 0.76x an SXM module's
dense bf16 rate and the NVL parts at about 0.84x, so the part is read from the device name, its memory and its
SM count, and every run reports which peak it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Dense bf16 tensor-core peak FLOP/s per device (NVIDIA datasheets; their headline figures with sparsity are
# twice these). Unknown parts get no MFU rather than a guess: an A100 fallback would overstate an H200's MFU ~3x.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200 SXM": 989e12,
    "H200 NVL": 835e12,
    "GH200": 989e12,
    "A100": 312e12,  # SXM and PCIe, 40 and 80 GB alike
}
_H100_NVL_MIN_GIB = 85.0  # the NVL part has 94 GB; SXM and PCIe have 80 GB (about 79.6 GiB usable)
_H100_PCIE_SMS = 114  # SXM and NVL parts have 132 SMs


@dataclass(frozen=True)
class Peak:
    """The MFU reference of this run. `part` and `flops` are None when the device is not in the table."""

    device: str  # torch's device name ("cpu" without a GPU)
    part: str | None
    flops: float | None
    memory_gib: float | None = None
    sm_count: int | None = None

    def describe(self) -> str:
        if self.flops is None:
            return f"{self.device}: no known bf16 peak, MFU not reported"
        return (f"{self.part} dense bf16 peak {self.flops / 1e12:.0f} TFLOP/s (device {self.device!r}, "
                f"{self.memory_gib:.1f} GiB, {self.sm_count} SMs)")


def identify_part(name: str, memory_gib: float, sm_count: int) -> str | None:
    """The PEAK_BF16_FLOPS key of a GPU from its name, memory and SM count; None when it is not in the table.

    Names like "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
    "NVIDIA H200 NVL", "NVIDIA GH200 480GB". Memory and SM count settle names that do not say the form factor."""
    n = name.upper()
    if "GH200" in n:
        return "GH200"
    if "H200" in n:  # before "H100"/"H20" look-alikes
        return "H200 NVL" if "NVL" in n else "H200 SXM"
    if "H100" in n:
        if "NVL" in n:
            return "H100 NVL"
        if "PCIE" in n:
            return "H100 PCIe"
        if "SXM" in n:
            return "H100 SXM"
        if memory_gib >= _H100_NVL_MIN_GIB:
            return "H100 NVL"
        return "H100 PCIe" if sm_count == _H100_PCIE_SMS else "H100 SXM"
    if "A100" in n:
        return "A100"
    return None


def device_peak_flops() -> Peak:
    """The peak of this process's current GPU (a CPU has none)."""
    if not torch.cuda.is_available():
        return Peak("cpu", None, None)
    name = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    memory_gib, sms = props.total_memory / 2**30, int(props.multi_processor_count)
    part = identify_part(name, memory_gib, sms)
    return Peak(name, part, PEAK_BF16_FLOPS.get(part) if part else None, memory_gib, sms)


def mfu(tflops_per_device: float, peak: float | None) -> float | str:
    return tflops_per_device * 1e12 / peak if peak else "unknown"
