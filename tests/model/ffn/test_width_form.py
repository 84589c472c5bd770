"""The width-path form the FLOP count assumes (counting.width_path_form) is the one the layer runs."""

from __future__ import annotations

import torch

from tests.model.ffn.tiny_layers import make_ffn
from vffn_pretrain.model.counting import width_path_form
from vffn_pretrain.model.ffn import versatile


def test_layer_at_tp1_runs_the_form_the_count_assumes(single_rank, monkeypatch):
    calls = []
    sparse = versatile.routed_expert_delta

    def spy(*args, **kwargs):
        calls.append(1)
        return sparse(*args, **kwargs)

    monkeypatch.setattr(versatile, "routed_expert_delta", spy, raising=False)
    mod = make_ffn("versatile", tp=1)
    mod.train()
    mod(torch.randn(8, 2, 32))
    expected = width_path_form("versatile", 1, "cpu")
    assert ("sparse" if calls else "masked_dense") == expected
