"""Backend choice follows megatron-core's own verdict on transformer-engine (HAVE_TE), not a bare import."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from megatron.core.extensions import transformer_engine as megatron_te

from vffn_pretrain.model import backend


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_broken_te_falls_back_to_local(on_gpu, monkeypatch):
    """A `transformer_engine` package that imports while megatron found its pytorch part broken (HAVE_TE False):
    auto picks the local modules, and asking for te says it is unavailable."""
    monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
    monkeypatch.setattr(megatron_te, "HAVE_TE", False)
    assert not backend.transformer_engine_available()
    assert backend.select_backend("auto").name == "local"
    with pytest.raises(RuntimeError, match="transformer-engine is not importable"):
        backend.select_backend("te")


def test_working_te_is_detected_from_megatron(on_gpu, monkeypatch):
    monkeypatch.setattr(megatron_te, "HAVE_TE", True)
    assert backend.transformer_engine_available()


def test_no_gpu_means_local(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(megatron_te, "HAVE_TE", True)
    assert not backend.transformer_engine_available()
    assert backend.select_backend("auto").name == "local"
