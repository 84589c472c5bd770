"""Parameter counts: conf/model gives the paper's exact dense sizes (docs/method.md §9.1), VersatileFFN adds exactly
d*(N + L_max) per layer (§8), and a model actually built (tiny for real, 354m on the meta device) has exactly
the count counting.py predicts, for every FFN kind."""

from pathlib import Path

import pytest
import torch
import yaml

from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.counting import FFNShape, ModelShape, count_params
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig

CONF = Path(__file__).resolve().parents[3] / "conf"
PAPER_DENSE = {"354m": 354_712_576, "720m": 720_812_544, "1b2": 1_212_741_632}
PAPER_VERSATILE_EXTRA = {"354m": 184_320, "720m": 276_480, "1b2": 368_640}  # 15 * d * (8 + 4), docs/method.md §8


def model_cfg(name: str) -> ModelConfig:
    return ModelConfig(**yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text()))


def ffn_cfg(name: str) -> FFNConfig:
    return FFNConfig(**yaml.safe_load((CONF / "ffn" / f"{name}.yaml").read_text()))


def shape(m: ModelConfig) -> ModelShape:
    return ModelShape(num_layers=m.num_layers, d_model=m.hidden_size, d_ff=m.ffn_hidden_size,
                      num_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
                      vocab_size=m.padded_vocab_size(), seq_length=4096, tied_embeddings=m.tied_embeddings)


def ffn_shape(f: FFNConfig) -> FFNShape:
    return FFNShape(f.kind, num_experts=f.num_experts, top_k=f.top_k, max_loops=f.max_loops, loops=f.loops)


FFN_CONFS = sorted(p.stem for p in (CONF / "ffn").glob("*.yaml"))


def test_all_ffn_confs_are_present():
    assert {"dense", "kloop2", "kloop4", "kloop6", "moe", "width_only", "depth_only", "versatile"} <= set(FFN_CONFS)
    assert ffn_cfg("versatile") == FFNConfig()  # the defaults are the paper's main setting


@pytest.mark.parametrize("name", sorted(PAPER_DENSE))
def test_paper_sizes_exact(name):
    m = model_cfg(name)
    assert m.padded_vocab_size() == 50_304 and m.ffn_hidden_size == 4 * m.hidden_size
    dense = count_params(shape(m), ffn_shape(ffn_cfg("dense")))["params_total"]
    versatile = count_params(shape(m), ffn_shape(ffn_cfg("versatile")))["params_total"]
    assert dense == PAPER_DENSE[name]
    assert versatile - dense == PAPER_VERSATILE_EXTRA[name] == m.num_layers * m.hidden_size * (8 + 4)


def built_params(m: ModelConfig, f: FFNConfig, meta: bool) -> int:
    if meta:
        with torch.device("meta"):
            chunks = build_model(m, f, ParallelConfig())
    else:
        chunks = build_model(m, f, ParallelConfig())
    return sum(p.numel() for c in chunks for p in c.parameters())


@pytest.mark.parametrize("ffn", FFN_CONFS)
def test_built_tiny_model_matches_counting(single_rank, ffn):
    m = model_cfg("tiny")
    n = built_params(m, ffn_cfg(ffn), meta=False)
    assert n == count_params(shape(m), ffn_shape(ffn_cfg(ffn)))["params_total"]
    if ffn == "dense":
        assert 1_000_000 < n < 10_000_000  # "a few M parameters"


@pytest.mark.parametrize("ffn", FFN_CONFS)
def test_built_354m_on_meta_matches_counting(single_rank, ffn):
    m = model_cfg("354m")
    n = built_params(m, ffn_cfg(ffn), meta=True)
    assert n == count_params(shape(m), ffn_shape(ffn_cfg(ffn)))["params_total"]
    if ffn == "dense":
        assert n == PAPER_DENSE["354m"]
