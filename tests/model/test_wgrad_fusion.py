"""The shared FFN's weight gradients accumulate in fp32 across loops on the transformer-engine path: the model is
built with megatron's gradient_accumulation_fusion (TE adds each loop's wgrad straight into main_grad) exactly when
it runs on TE and will be wrapped in DDP (which makes main_grad); and a path that would multiply by a weight outside
its linear (the CPU sparse width path) refuses to train under fusion rather than drop that gradient."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests import tiny_model
from tests.model.ffn.tiny_layers import make_ffn
from vffn_pretrain.model import gpt
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.parallel.config import ParallelConfig


class _Built(Exception):
    pass


def test_fusion_exactly_on_transformer_engine_under_ddp(single_rank, monkeypatch):
    local = gpt.select_backend("local")
    monkeypatch.setattr(gpt, "select_backend", lambda prefer: replace(local, name=prefer))  # a TE-named stand-in
    seen = []

    def capture(*args, gradient_accumulation_fusion, **kwargs):
        seen.append(gradient_accumulation_fusion)
        raise _Built  # the decision is all this test needs (local linears cannot fuse without apex)

    monkeypatch.setattr(gpt, "build_transformer_config", capture)
    for backend, fused in (("te", True), ("te", False), ("local", True)):
        with pytest.raises(_Built):
            gpt.build_model(ModelConfig(**tiny_model.FFN_GPT), FFNConfig(kind="versatile"), ParallelConfig(),
                            backend=backend, fused_wgrad=fused)
    assert seen == [True, False, False]


def test_the_sparse_width_path_refuses_to_train_under_fusion(single_rank):
    mod = make_ffn("versatile", setup=False)
    mod.config.gradient_accumulation_fusion = True
    h = torch.randn(8, 2, mod.config.hidden_size, requires_grad=True)
    with pytest.raises(RuntimeError, match="gradient_accumulation_fusion"):
        mod(h)
    mod.eval()
    with torch.no_grad():
        mod(h)  # no gradient, nothing to lose
