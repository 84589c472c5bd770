"""Seconds from FLOPs and bytes: analytic defaults from a device's peak, or a calibration file.

The calibration file (written by `vffn-plan calibrate`) is JSON:
  {"device": str, "seconds_per_flop": {"forward": {kind: s}, "backward": {kind: s}},
   "seconds_per_item": {"E": s, "L": s}, "p2p_seconds_per_byte": s, "p2p_latency_s": s,
   "optimizer_seconds_per_param": s, "shared_slowdown": {k: x}}
where kind is an FFN kind, "head" or "embedding"; a kind missing from it uses the "default" entry. The optimizer
rate covers what a training step does once after the pipeline drains (gradient norm, clipping, the optimizer's
update, zeroing the buffers), per parameter of the rank; analytic profiles leave it at 0 (on a GPU it is a few
milliseconds against seconds of pipeline). "shared_slowdown" (optional, `--shared-ranks`): how many times slower
one rank trains while k ranks of this host train at once, for k = 1, 2, ...; the simulator uses it for ranks
that share CPU cores (`--shared-cores`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from vffn_pretrain.planning.costs import ItemCost
from vffn_pretrain.planning.files import regular_file

# Dense bf16 peak FLOP/s and a typical inter-GPU bandwidth (bytes/s) per device, plus the share of peak a
# megatron-core training step reaches on transformer matmuls (an assumption, not a measurement).
DEVICE_PROFILES = {
    "H200": {"peak_flops": 989e12, "p2p_bytes_per_s": 100e9},
    "H100": {"peak_flops": 989e12, "p2p_bytes_per_s": 100e9},
    "A100": {"peak_flops": 312e12, "p2p_bytes_per_s": 50e9},
    # A CPU rank with gloo on loopback: a rough figure (fp32 matmuls on a few cores, gloo's ~0.1 ms per
    # message); `vffn-plan calibrate` measures the machine instead.
    "cpu": {"peak_flops": 100e9, "p2p_bytes_per_s": 2e9, "p2p_latency_s": 100e-6},
}
ANALYTIC_EFFICIENCY = 0.45
MAX_CALIBRATION_BYTES = 16 << 20  # a calibration file is a few kilobytes


def _rate(value, where: str) -> float:
    """A finite number >= 0 (JSON true/false are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {value!r:.60}")
    return float(value)


@dataclass
class Timing:
    """Converts an item's FLOPs into seconds; P2P transfers cost latency + bytes * seconds_per_byte."""

    forward: dict[str, float]
    backward: dict[str, float]
    per_item: dict[str, float] = field(default_factory=dict)
    p2p_seconds_per_byte: float = 0.0
    p2p_latency_s: float = 0.0
    source: str = "analytic"
    optimizer_seconds_per_param: float = 0.0
    shared_slowdown: dict[int, float] = field(default_factory=dict)

    @classmethod
    def analytic(cls, device: str = "H100", efficiency: float = ANALYTIC_EFFICIENCY) -> Timing:
        if device not in DEVICE_PROFILES:
            raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICE_PROFILES)}")
        prof = DEVICE_PROFILES[device]
        s = 1.0 / (prof["peak_flops"] * efficiency)
        return cls({"default": s}, {"default": s}, {}, 1.0 / prof["p2p_bytes_per_s"], prof.get("p2p_latency_s", 20e-6),
                   f"analytic {device} peak x {efficiency}")

    @classmethod
    def load(cls, path: str | Path) -> Timing:
        """Read a calibration file, checking every field it uses (ValueError or OSError naming the file and the
        field): a JSON object, finite rates >= 0 (a "default" rate in both tables), slowdowns >= 1."""
        file = regular_file(path, MAX_CALIBRATION_BYTES)
        try:
            data = json.loads(file.read_text())
        except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
        spf = data.get("seconds_per_flop")
        if not isinstance(spf, dict):
            raise ValueError(f"{path}: needs 'seconds_per_flop': {{'forward': {{...}}, 'backward': {{...}}}}")
        tables = {}
        for table in ("forward", "backward"):
            rates = spf.get(table)
            if not isinstance(rates, dict) or "default" not in rates:
                raise ValueError(f"{path}: seconds_per_flop.{table} must be an object with a 'default' rate")
            tables[table] = {str(k): _rate(x, f"{path}: seconds_per_flop.{table}.{k}") for k, x in rates.items()}
        per_item = data.get("seconds_per_item", {})
        if not isinstance(per_item, dict):
            raise ValueError(f"{path}: seconds_per_item must be an object")
        slowdown_raw = data.get("shared_slowdown", {})
        if not isinstance(slowdown_raw, dict):
            raise ValueError(f"{path}: shared_slowdown must be an object")
        slowdown = {}
        for k, x in slowdown_raw.items():
            if not str(k).isdigit() or int(k) < 1:
                raise ValueError(f"{path}: shared_slowdown keys are rank counts >= 1, got {k!r}")
            if _rate(x, f"{path}: shared_slowdown.{k}") < 1:
                raise ValueError(f"{path}: shared_slowdown needs rank counts >= 1 and finite slowdowns >= 1, "
                                 f"got {x!r} for {k}")
            slowdown[int(k)] = float(x)
        device = data.get("device", "?")
        return cls(tables["forward"], tables["backward"],
                   {str(k): _rate(x, f"{path}: seconds_per_item.{k}") for k, x in per_item.items()},
                   _rate(data.get("p2p_seconds_per_byte", 0.0), f"{path}: p2p_seconds_per_byte"),
                   _rate(data.get("p2p_latency_s", 0.0), f"{path}: p2p_latency_s"),
                   f"calibrated ({device if isinstance(device, str) else '?'}, {path})",
                   _rate(data.get("optimizer_seconds_per_param", 0.0), f"{path}: optimizer_seconds_per_param"),
                   slowdown)

    def save(self, path: str | Path, device: str) -> None:
        Path(path).write_text(json.dumps({
            "device": device, "seconds_per_flop": {"forward": self.forward, "backward": self.backward},
            "seconds_per_item": self.per_item, "p2p_seconds_per_byte": self.p2p_seconds_per_byte,
            "p2p_latency_s": self.p2p_latency_s,
            "optimizer_seconds_per_param": self.optimizer_seconds_per_param,
            "shared_slowdown": {str(k): x for k, x in sorted(self.shared_slowdown.items())}}, indent=1))

    def _rate(self, table: dict[str, float], kind: str) -> float:
        return table.get(kind, table["default"])

    def forward_s(self, item: ItemCost) -> float:
        return item.forward_flops * self._rate(self.forward, item.kind) + self.per_item.get(item.symbol, 0.0)

    def backward_s(self, item: ItemCost) -> float:
        # A recomputed forward runs at the forward rate.
        recomputed = item.backward_flops_effective - item.backward_flops
        return (item.backward_flops * self._rate(self.backward, item.kind)
                + recomputed * self._rate(self.forward, item.kind) + self.per_item.get(item.symbol, 0.0))

    def optimizer_s(self, params: float) -> float:
        return params * self.optimizer_seconds_per_param

    def p2p_s(self, nbytes: float) -> float:
        return self.p2p_latency_s + nbytes * self.p2p_seconds_per_byte
