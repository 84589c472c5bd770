"""gpu_check's correctness step on a CPU that computes like a GPU: with the fp32 matrix products rounded to TF32
(testing/tf32.py) every kind passes at the tolerance derived from TF32, and a seeded bug fails it; the MoE
row's float64 reference is built on the local backend (transformer-engine has no float64)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from vffn_pretrain.testing import ffn_device_check as check
from vffn_pretrain.testing.tf32 import TF32Products

ROOT = Path(__file__).resolve().parents[2]


def _ffn_layer():
    spec = importlib.util.spec_from_file_location("ffn_layer", ROOT / "benchmarks" / "ffn_layer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_block = _ffn_layer().build_block


def test_tolerances_follow_the_products_format():
    assert check.tolerance("bf16") == pytest.approx(2 ** -5)  # 8 units of bf16 roundoff, about 3e-2
    assert check.tolerance("tf32") == pytest.approx(2 ** -8)  # about 3.9e-3
    assert check.tolerance("fp32") == check.FLOOR
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert check.gemm_precision(torch.bfloat16, cuda, "te") == "bf16"
    assert check.gemm_precision(torch.float32, cpu, "local") == "fp32"
    assert check.gemm_precision(torch.float32, cuda, "te") == "tf32"  # TE runs every fp32 GEMM in TF32


def test_tf32_switches_and_override_count_as_tf32(monkeypatch):
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "0")
    try:
        matmul.allow_tf32 = False
        assert check.gemm_precision(torch.float32, torch.device("cuda"), "local") == "fp32"
        monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")  # what NGC images set
        assert check.gemm_precision(torch.float32, torch.device("cuda"), "local") == "tf32"
        monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "0")
        matmul.allow_tf32 = True
        assert check.gemm_precision(torch.float32, torch.device("cuda"), "local") == "tf32"
    finally:
        matmul.allow_tf32 = before


def _under_tf32(kind, kw, training):
    with TF32Products() as mode:
        row = check.compare(build_block, kind, kw, dtype=torch.float32, training=training, precision="tf32")
    return row, mode.count


def test_every_kind_passes_under_tf32(single_rank):
    for kind, kw in check.variants():
        for training in (True, False):
            row, products = _under_tf32(kind, kw, training)
            assert products > 0
            assert row["ok"], (kind, kw, training, row["errors"])
            # TF32 really moved the values, past the fp32 tolerance (which this row would fail)
            assert row["max_error"] > check.FLOOR or not training, (kind, row["max_error"])


def test_a_seeded_bug_fails_under_tf32(single_rank, monkeypatch):
    from vffn_pretrain.model.ffn import versatile

    def off_by_one(loops, max_loops):  # lambda = (L - l) / (L + 1): a plausible slip
        return (max_loops - loops.to(torch.float32)) / (max_loops + 1)

    monkeypatch.setattr(versatile, "fusion_weight", off_by_one)
    row, _ = _under_tf32("versatile", {"balance_coeff": 0.05}, True)
    assert not row["ok"], row["errors"]  # its gradients are off by about 6e-2


def test_the_moe_reference_is_built_on_the_local_backend_in_float64(single_rank):
    calls = []

    def recording(cfg, d, d_ff, dtype, backend="auto"):
        calls.append((dtype, backend))
        return build_block(cfg, d, d_ff, dtype, backend=backend)

    row = check.compare(recording, "moe", {}, dtype=torch.float32, training=True)
    assert row["ok"], row["errors"]
    assert calls == [(torch.float32, "auto"), (torch.float64, "local")]

    def te_named(cfg, d, d_ff, dtype, backend="auto"):  # a build that would hand the reference a TE block
        block = build_block(cfg, d, d_ff, dtype, backend="local")
        block.backend_name = "te"
        return block

    with pytest.raises(ValueError, match="local backend"):
        check.compare(te_named, "moe", {}, dtype=torch.float32, training=True)
