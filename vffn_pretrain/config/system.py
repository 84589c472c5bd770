"""`system.*` config group: how the model runs on this hardware (kernels, number format, activation recompute).

None of it changes the parameters' names or shapes: a checkpoint's weights load under any of these settings, and a
run resumes under another backend or precision (README, "Checkpoints, resume, signals", says what carries over).
"""

from __future__ import annotations

from dataclasses import dataclass

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import check_fields, setting


@dataclass
class SystemConfig:
    """backend: auto | local (megatron's local modules) | te (transformer-engine); auto picks te where
    megatron-core reports a working transformer-engine (model/backend.py).
    precision: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16; bf16 keeps fp32 main weights in the optimizer.
    On a GPU, fp32 matrix products may run in TF32 (transformer-engine always does so).
    recompute_granularity: null | full | selective (megatron-core activation recompute); full uses
    recompute_method (uniform | block) and recompute_num_layers.
    deterministic: deterministic kernels where they exist (training.numerics.use_deterministic_kernels), so two
    runs of one config give the same losses bitwise; slower on a GPU."""

    backend: str = "auto"
    precision: str = "auto"
    recompute_granularity: str | None = None
    recompute_method: str = "uniform"
    recompute_num_layers: int = setting(1, ge=1)
    deterministic: bool = False

    def validate(self) -> None:
        check_fields(self, "system")
        if self.backend not in ("auto", "local", "te"):
            raise ConfigError("system.backend", f"must be auto, local or te, got {self.backend!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError("system.precision", f"must be auto, fp32 or bf16, got {self.precision!r}")
        if self.recompute_granularity not in (None, "full", "selective"):
            raise ConfigError("system.recompute_granularity",
                              f"must be null, full or selective, got {self.recompute_granularity!r}")
        if self.recompute_method not in ("uniform", "block"):
            raise ConfigError("system.recompute_method", f"must be uniform or block, got {self.recompute_method!r}")
