"""TF32 matrix products on a CPU, to test what a GPU's fp32 GEMMs do to a computation.

On an Ampere-or-later GPU an fp32 matrix product may run on the tensor cores in TF32: each operand is rounded to
a 10-bit mantissa (fp32 has 23) and the products are summed in fp32. transformer-engine does this for every fp32
GEMM, and NGC images force it for torch's. `TF32Products` is a TorchFunctionMode that rounds the fp32 operands
of torch's matrix products the same way (round to nearest, ties to even) before they run, so a check's
tolerances can be tested against TF32 without a GPU. It sees the products made through Python (`torch.matmul`,
`mm`, `bmm`, `addmm`, `F.linear`, the `@` operator, and those in the backward of Python autograd Functions such
as megatron's linears); the C++ backward of torch's own ops is not seen. bf16 and float64 operands are left as
they are (TF32 applies to fp32 only).

Use: `with TF32Products(): ...`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_DROPPED_BITS = 23 - 10


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """An fp32 tensor rounded to TF32's 10-bit mantissa (kept in fp32); other dtypes unchanged."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
        return t
    bits = t.detach().contiguous().view(torch.int32)
    half = (1 << (_DROPPED_BITS - 1)) - 1
    odd = (bits >> _DROPPED_BITS) & 1
    rounded = ((bits + half + odd) & ~((1 << _DROPPED_BITS) - 1)).view(torch.float32)
    # Keep the autograd graph: the rounding is a forward-only perturbation of the value.
    return t + (rounded - t.detach())


# func -> the positions of its matrix operands among the positional arguments
_PRODUCTS = {
    torch.matmul: (0, 1), torch.mm: (0, 1), torch.bmm: (0, 1), torch.addmm: (1, 2), torch.baddbmm: (1, 2),
    F.linear: (0, 1), torch.Tensor.matmul: (0, 1), torch.Tensor.mm: (0, 1), torch.Tensor.bmm: (0, 1),
    torch.Tensor.__matmul__: (0, 1), torch.Tensor.__rmatmul__: (0, 1),
}


class TF32Products(TorchFunctionMode):
    """Round the fp32 operands of matrix products to TF32 while active (see the module docstring). `count` is
    the number of products rounded."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        positions = _PRODUCTS.get(func)
        if positions and any(isinstance(args[i], torch.Tensor) and args[i].dtype == torch.float32
                             for i in positions if i < len(args)):
            args = tuple(round_to_tf32(a) if i in positions else a for i, a in enumerate(args))
            if "weight" in kwargs:  # F.linear(x, weight=...)
                kwargs = dict(kwargs, weight=round_to_tf32(kwargs["weight"]))
            self.count += 1
        return func(*args, **kwargs)
