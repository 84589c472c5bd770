"""RMSNorm that megatron-core can use with sequence parallelism.

megatron-core's torch fallback norm (`WrappedTorchNorm`) refuses sequence parallelism. This one marks its scale
`sequence_parallel`, so megatron-core's `finalize_model_grads` all-reduces that gradient over the TP group.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    """y = x / rms(x) * weight over the last dim, computed in fp32. Input [..., hidden], output same dtype."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)
