"""The trainer-facing API (state.py: temperature schedule, statistics, eval overrides) and dense-checkpoint
conversion (convert.py): a dense model's weights load into every variant with only the new parameters missing,
and with the width path off and one loop forced the converted model reproduces the dense logits."""

import math

import pytest
import torch

from vffn_pretrain.model import noise
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.ffn.convert import is_new_parameter
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all
from vffn_pretrain.testing.dense_conversion import convert_dense_state_dict
from vffn_pretrain.testing.ffn_stats_summary import stats_summary

TINY = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128)


def test_tau_schedule_defaults():
    cfg = FFNConfig()
    assert state.current_tau(cfg, 0, 10) == 5.0
    assert state.current_tau(cfg, 1, 10) == pytest.approx(5.0 * 0.99984)
    assert state.current_tau(cfg, 1000, 10) == pytest.approx(5.0 * 0.99984 ** 1000)
    # the floor is reached after ln(0.02) / ln(0.99984) = 24448.6 steps (docs/method.md §4.2)
    assert state.current_tau(cfg, 24448, 0) > 0.1
    assert state.current_tau(cfg, 24449, 0) == 0.1
    assert state.current_tau(cfg, 10**9, 0) == 0.1


def test_tau_decay_to_end():
    cfg = FFNConfig(tau_decay_to_end=True)
    taus = [state.current_tau(cfg, t, 100) for t in range(100)]
    assert taus[0] == 5.0 and taus[-1] == 0.1 and taus[-2] > 0.1
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert taus[50] == pytest.approx(5.0 * math.sqrt(0.02) ** (50 / 49.5), rel=1e-9)


def test_set_training_step_and_stats(single_rank):
    seed_all(0)
    model = build_model(TINY, FFNConfig(kind="versatile", tau_decay_to_end=True), ParallelConfig())[0]
    tau = state.set_training_step([model], 7, 20)
    assert tau == state.current_tau(FFNConfig(tau_decay_to_end=True), 7, 20)
    assert all(m.tau == tau for m in state.ffn_modules(model))
    tokens = torch.randint(0, 128, (2, 8))
    pos = torch.arange(8).expand(2, 8)
    for mb in range(3):
        noise.seed_microbatch(0, (0, mb))
        model(tokens, pos, None)
    stats = state.collect_stats([model])
    assert sorted(k for k in stats if isinstance(k, int)) == [1, 2]
    for layer in (1, 2):
        s = stats[layer]
        assert s["tokens"] == 48 and sum(s["loop_hist"]) == 48 and len(s["loop_hist"]) == 4
        assert sum(s["expert_load"]) == pytest.approx(1.0)
        assert 0.0 <= s["mean_lambda"] <= 0.75 and s["balance_loss"] >= 1.0 - 1e-6
    assert stats["mean_loops"] == pytest.approx(
        sum((i + 1) * c for L in (1, 2) for i, c in enumerate(stats[L]["loop_hist"])) / 96)
    empty = state.collect_stats([model])  # reset by the previous call
    assert empty[1]["tokens"] == 0 and empty["mean_loops"] is None
    model.eval()
    with torch.no_grad():
        model(tokens, pos, None)
    val = state.collect_stats([model])
    assert val[1]["tokens"] == 16 and val[1]["balance_loss"] is None and val["mean_loops"] >= 1.0
    summary = stats_summary(stats)
    assert set(summary) == {"mean_loops", "mean_lambda", "balance_loss"}


def _logits(model, training=False):
    model.train(training)
    tokens = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    noise.seed_microbatch(0, (0, 0))
    with torch.no_grad():
        return model(tokens, torch.arange(8).expand(2, 8), None)


@pytest.mark.parametrize("kind", ["versatile", "depth_only", "width_only", "kloop", "moe"])
def test_dense_checkpoint_loads_with_only_new_parameters_missing(single_rank, kind):
    seed_all(0)
    dense = build_model(TINY, FFNConfig(kind="dense"), ParallelConfig())[0]
    seed_all(1)
    variant = build_model(TINY, FFNConfig(kind=kind, loops=1), ParallelConfig())[0]
    result = variant.load_state_dict(convert_dense_state_dict(dense.state_dict(), kind), strict=False)
    assert result.unexpected_keys == []
    assert bool(result.missing_keys) == (kind != "kloop")  # kloop reuses the dense weights only
    assert all(is_new_parameter(k, kind) for k in result.missing_keys), result.missing_keys
    new = {k for k in variant.state_dict() if is_new_parameter(k, kind) and not k.endswith("_extra_state")}
    assert new == set(result.missing_keys)
    if kind == "moe":
        layer = dense.decoder.layers[0]
        shared = variant.decoder.layers[0].mlp.shared_experts
        assert torch.equal(shared.linear_fc1.weight, layer.mlp.linear_fc1.weight)
        return
    # Width off, one loop: the converted model is the dense model (continued pre-training starts there).
    state.set_inference_overrides([variant], force_loops=1 if kind in ("versatile", "depth_only") else None,
                                  disable_width=True)
    for training in (False, True):
        assert torch.allclose(_logits(variant, training), _logits(dense, training), atol=1e-5, rtol=0)
