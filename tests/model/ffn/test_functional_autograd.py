"""The hand-written autograd of functional.py: `fuse` keeps no fp32 copy of the states for its backward and gives
the gradients autograd gives the fp32 expression, bit for bit; the heads' logits are float64-accumulated (so a
TF32 product cannot move a decision), keep no fp32 copy of their input, and have float64-exact gradients."""

from __future__ import annotations

import torch

from vffn_pretrain.model.ffn.functional import fuse, router_logits
from vffn_pretrain.testing.tf32 import TF32Products, round_to_tf32

T, H = 64, 32


def saved_bytes(fn, *args) -> tuple[torch.Tensor, int]:
    """fn(*args) and the bytes of the distinct storages autograd saved for its backward."""
    seen, total = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, total[0]


def autograd_fuse(lam, y_width, y_depth):
    """The fp32 expression `fuse` computes, differentiated by autograd (the form it replaces)."""
    lam = lam.reshape(-1, 1, 1)
    return (lam * y_width.float() + (1 - lam) * y_depth.float()).to(y_width.dtype)


def _fuse_inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    lam = torch.rand(T, generator=gen).requires_grad_(True)
    y_width = torch.randn(T, 1, H, generator=gen).to(dtype).requires_grad_(True)
    y_depth = torch.randn(T, 1, H, generator=gen).to(dtype).requires_grad_(True)
    grad = torch.randn(T, 1, H, generator=gen).to(dtype)
    return lam, y_width, y_depth, grad


def test_fuse_keeps_no_fp32_copy_and_gives_autograds_gradients_bitwise():
    for dtype in (torch.bfloat16, torch.float32):
        results = {}
        for name, fn in (("fuse", fuse), ("autograd", autograd_fuse)):
            lam, y_width, y_depth, grad = _fuse_inputs(dtype)
            out, nbytes = saved_bytes(fn, lam, y_width, y_depth)
            out.backward(grad)
            results[name] = (out, lam.grad, y_width.grad, y_depth.grad, nbytes)
        for mine, theirs in zip(results["fuse"][:4], results["autograd"][:4]):
            assert torch.equal(mine, theirs), dtype
        states = 2 * T * H * dtype.itemsize  # y_width and y_depth in their own dtype
        assert results["fuse"][4] <= states + T * 4, (dtype, results["fuse"][4])
        if dtype == torch.bfloat16:  # autograd's form keeps both states in fp32: twice the bytes
            assert results["autograd"][4] >= 2 * T * H * 4


def test_head_logits_are_float64_accumulated_and_keep_no_fp32_copy():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(T, 2, H, generator=gen).to(torch.bfloat16).requires_grad_(True)
    weight = (torch.randn(4, H, generator=gen) * 0.3).requires_grad_(True)
    logits, nbytes = saved_bytes(router_logits, hidden, weight)
    assert logits.dtype == torch.float32
    assert nbytes <= hidden.numel() * 2 + weight.numel() * 4  # the bf16 input as it is, and the weight
    h64, w64 = hidden.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    want = h64 @ w64.T
    assert torch.equal(logits, want.float())  # float64 sums, rounded once
    grad = torch.randn(T, 2, 4, generator=gen)
    logits.backward(grad)
    want.backward(grad.double())
    assert torch.equal(weight.grad, w64.grad.float())
    assert torch.equal(hidden.grad, h64.grad.to(torch.bfloat16))


def test_tf32_products_leave_the_head_logits_alone():
    gen = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(T, H, generator=gen), torch.randn(4, H, generator=gen)
    with TF32Products() as mode:
        rounded = hidden @ weight.T
        logits = router_logits(hidden, weight)
    assert mode.count == 1  # the fp32 product only
    assert torch.equal(logits, (hidden.double() @ weight.double().T).float())
    assert torch.equal(rounded, round_to_tf32(hidden) @ round_to_tf32(weight).T)
    assert not torch.equal(rounded, hidden @ weight.T)


def test_tf32_rounding_keeps_ten_mantissa_bits_to_nearest_even():
    one = torch.tensor([1.0])
    ulp = 2.0 ** -10  # TF32's spacing at 1
    x = torch.tensor([1 + ulp / 2, 1 + 1.5 * ulp, 1 + ulp / 2 + 2.0 ** -20, -3.0, 1 + ulp * 0.49])
    assert round_to_tf32(x).tolist() == [1.0, 1 + 2 * ulp, 1 + ulp, -3.0, 1.0]  # ties to even, else nearest
    values = torch.randn(10000, generator=torch.Generator().manual_seed(3))
    rel = ((round_to_tf32(values) - values).abs() / values.abs()).max()
    assert 2.0 ** -12 < rel <= 2.0 ** -11
    assert round_to_tf32(one.double()).dtype == torch.float64
