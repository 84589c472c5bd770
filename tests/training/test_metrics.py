"""What the user sees: metrics.jsonl records, log lines, TensorBoard, the summary, MFU honesty."""

from __future__ import annotations

import json

import pytest

from tests.training import trainer_runs as cases
from vffn_pretrain.model import counting
from vffn_pretrain.training import throughput


def test_metrics_log_lines_tensorboard_and_summary(rank_pools, base_overrides, tmp_path):
    run_dir = tmp_path / "run"
    result = rank_pools(1).run(cases.train, [*base_overrides, f"run_dir={run_dir}", "train.max_steps=4",
                                             "logging.interval=2", "logging.stats_interval=4", "train.eval_interval=2",
                                             "logging.tensorboard=true"])[0]
    assert result["exit_code"] == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in evals] == [2, 4]
    for r in train:
        for key in ("step", "loss", "lr", "grad_norm", "tokens_per_sec", "tau", "mean_loops", "consumed_tokens",
                    "tflops_per_device", "mfu", "skipped_steps", "eta_s"):
            assert key in r, key
        assert 1.0 <= r["mean_loops"] <= 4.0 and 0.1 <= r["tau"] <= 5.0 and r["tokens_per_sec"] > 0
        assert r["mfu"] == "unknown"  # a CPU has no entry in the peak table: no guessing
    assert "layers" not in train[0]
    layers = train[1]["layers"]  # per-layer statistics at logging.stats_interval
    assert sorted(layers) == ["1", "2", "3", "4"]
    for layer in layers.values():
        assert len(layer["loop_hist"]) == 4 and len(layer["expert_load"]) == 8
        assert abs(sum(layer["expert_load"]) - 1.0) < 1e-6
    for r in evals:
        assert r["val_ppl"] == pytest.approx(2.718281828 ** r["val_loss"], rel=1e-6)
        assert 1.0 <= r["val_mean_loops"] <= 4.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_val_loss"] == evals[-1]["val_loss"]
    assert summary["tokens"] == 4 * 8 * 32
    assert summary["flops_per_token_train"] > summary["flops_per_token_eval"] > 0
    # Throughput counts the width path as TP = 1 computes it (sparse, reusing a1): (k/N)/3 of F, not the paper's k/N.
    m_shape, f_shape = trainer_shapes(base_overrides)
    # Token-sparse recursion (the default): the FFN's backward follows the sampled loops, uniform before any step.
    assert summary["flops_per_token_executed"] == pytest.approx(
        counting.flops_per_token(m_shape, f_shape, training=True, width_form="sparse", token_sparse=True))
    all_token = counting.flops_per_token(m_shape, f_shape, training=True, width_form="sparse")
    assert summary["flops_per_token_executed"] < all_token < summary["flops_per_token_train"]
    # ... and each log line counts the mix sampled in its window (pooled over layers)
    hist = [sum(col) for col in zip(*(layer["loop_hist"] for layer in train[1]["layers"].values()))]
    window = counting.flops_per_token(m_shape, f_shape, training=True, width_form="sparse", token_sparse=True,
                                      loop_mix=[c / sum(hist) for c in hist])
    assert train[1]["tflops_per_device"] == pytest.approx(window * train[1]["tokens_per_sec"] / 1e12)
    for r in train:
        assert r["tflops_per_device"] < all_token * r["tokens_per_sec"] / 1e12
    assert summary["mfu_peak"] == "cpu: no known bf16 peak, MFU not reported"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def trainer_shapes(overrides: list[str]):
    from vffn_pretrain.training.trainer import model_shapes

    return model_shapes(cases.run_config(overrides))


@pytest.mark.parametrize("name, memory_gib, sms, part, peak", [
    ("NVIDIA H100 80GB HBM3", 79.6, 132, "H100 SXM", 989e12),
    ("NVIDIA H100 PCIe", 79.6, 114, "H100 PCIe", 756e12),
    ("NVIDIA H100", 79.6, 114, "H100 PCIe", 756e12),  # a name that does not say: the SM count does
    ("NVIDIA H100 NVL", 93.6, 132, "H100 NVL", 835e12),
    ("NVIDIA H100", 93.6, 132, "H100 NVL", 835e12),  # ... or the memory
    ("NVIDIA H200", 139.8, 132, "H200 SXM", 989e12),
    ("NVIDIA H200 NVL", 139.8, 132, "H200 NVL", 835e12),
    ("NVIDIA GH200 480GB", 94.5, 132, "GH200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 79.2, 108, "A100", 312e12),
    ("NVIDIA A100 80GB PCIe", 79.2, 108, "A100", 312e12),
    ("NVIDIA H20", 95.0, 78, None, None),  # not an H200
    ("NVIDIA L40S", 44.4, 142, None, None),
])
def test_peak_is_the_part_s_and_says_which(monkeypatch, name, memory_gib, sms, part, peak):
    import types

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(
        total_memory=int(memory_gib * 2**30), multi_processor_count=sms))
    got = throughput.device_peak_flops()
    assert (got.device, got.part, got.flops) == (name, part, peak)
    if peak:
        assert got.describe().startswith(f"{part} dense bf16 peak {peak / 1e12:.0f} TFLOP/s (device {name!r}")
    else:
        assert "MFU not reported" in got.describe()


def test_mfu():
    assert throughput.mfu(494.5, 989e12) == pytest.approx(0.5)
    assert throughput.mfu(100.0, None) == "unknown"


def test_log_line_format():
    from vffn_pretrain.training.callbacks.console import format_log_line

    line = format_log_line({"step": 10, "max_steps": 100, "consumed_tokens": 2048.0, "loss": 3.5, "lr": 1e-3,
                            "grad_norm": 0.5, "tau": 4.9, "mean_loops": 2.5, "tokens_per_sec": 1000.0,
                            "tflops_per_device": 0.1, "mfu": "unknown", "skipped_steps": 0, "eta_s": 90})
    for part in ("step     10/100", "loss 3.5000", "lr 1.000e-03", "grad_norm 0.500", "tau 4.900", "loops 2.50",
                 "tok/s 1000", "MFU unknown", "skipped 0", "ETA 01:30"):
        assert part in line, part
