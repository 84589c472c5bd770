"""ffn.layers: a per-layer FFN pattern. The pattern parses to the intended kinds, bad patterns are start-up errors
naming `ffn.layers`, the built model has each layer's own FFN, and counting.py's figures for a mixed model are
those of the model actually built (parameters) and the per-layer sum of uniform models (FLOPs)."""

import pytest
import torch

from tests.training import trainer_runs as cases
from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.model import counting
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.ffn.versatile import VersatileFFN
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.model.layer_pattern import parse_layer_pattern
from vffn_pretrain.parallel.config import ParallelConfig


def test_pattern_forms_agree():
    expected = ["dense", "dense", "versatile", "versatile", "versatile", "depth_only"]
    assert parse_layer_pattern("dense*2, versatile*3,depth_only", 6) == expected
    assert parse_layer_pattern(["dense*2", "versatile", "versatile", "versatile", "depth_only"], 6) == expected
    assert FFNConfig(kind="dense").layer_kinds(3) == ["dense"] * 3  # null: every layer is ffn.kind


@pytest.mark.parametrize("pattern, words", [("dense*2,versatile", "names 3 layers but model.num_layers=4"),
                                            ("dense,versatile*5", "names 6 layers"),
                                            ("dense*2,fancy*2", "unknown FFN kind 'fancy'"),
                                            ("dense*x,versatile*3", "repeat count"),
                                            ("moe*2,dense*2", "moe layers cannot be mixed"),
                                            ("", "unknown FFN kind ''")])
def test_bad_patterns_name_the_key(pattern, words):
    with pytest.raises(ConfigError) as err:
        cases.run_config([*cases.BASE, f"ffn.layers='{pattern}'"])
    assert err.value.key == "ffn.layers" and words in str(err.value)


def test_settings_of_every_kind_in_the_pattern_are_checked():
    # ffn.kind=dense needs no experts, but the versatile layers in the pattern do.
    with pytest.raises(ConfigError) as err:
        FFNConfig(kind="dense", num_experts=5, layers="dense,versatile").validate(d_ff=96, num_layers=2)
    assert err.value.key == "ffn.num_experts"


MODEL = ModelConfig(num_layers=4, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, vocab_size=512)


def test_built_mixed_model_has_each_layers_ffn_and_the_counted_size(single_rank):
    ffn = FFNConfig(kind="dense", num_experts=4, top_k=2, max_loops=3, layers="dense,versatile*2,depth_only")
    (chunk,) = build_model(MODEL, ffn, ParallelConfig())
    layers = chunk.decoder.layers
    kinds = [layer.mlp.kind if isinstance(layer.mlp, VersatileFFN) else "dense" for layer in layers]
    assert kinds == ["dense", "versatile", "versatile", "depth_only"]
    built = sum(p.numel() for p in chunk.parameters())
    shape = counting.ModelShape(4, 64, 256, 4, None, MODEL.padded_vocab_size(), 32)
    counted = counting.count_params(shape, ffn.counting_shape(4))
    assert built == counted["params_total"]
    # Per layer too: the built layer's parameters are that kind's count.
    assert [sum(p.numel() for p in layer.parameters()) for layer in layers] == counted["params_per_layer"]


def test_mixed_flops_are_the_per_layer_sum():
    shape = counting.ModelShape(6, 64, 256, 4, None, 512, 32)
    dense, vffn = counting.FFNShape("dense"), counting.FFNShape("versatile", 4, 2, 3)
    one = counting.ModelShape(1, 64, 256, 4, None, 512, 32)
    head = 2.0 * 64 * 512  # the LM head, once per token
    for training, mult in ((True, 3.0), (False, 1.0)):
        per_layer = [counting.flops_per_token(one, f, training=training) / mult - head for f in (dense, vffn)]
        expected = mult * (2 * per_layer[0] + 4 * per_layer[1] + head)
        got = counting.flops_per_token(shape, [dense, dense, vffn, vffn, vffn, vffn], training=training)
        assert got == pytest.approx(expected, rel=1e-12)


def test_pp_stages_take_their_own_layers_slots(rank_pools):
    out = rank_pools(2).run(_stage_kinds)
    assert out == [["dense", "dense", "versatile"], ["versatile"]]


def _stage_kinds() -> list[str]:
    from megatron.core import parallel_state as ps

    from vffn_pretrain.parallel.init import setup_model_parallel

    parallel = ParallelConfig(pp=2, pipeline_layout="Ettt|tL")
    setup_model_parallel(parallel)
    try:
        with torch.device("meta"):
            (chunk,) = build_model(MODEL, FFNConfig(layers="dense*2,versatile*2"), parallel)
        return [type(layer.mlp).__name__.replace("VersatileFFN", "versatile").replace("MLP", "dense")
                for layer in chunk.decoder.layers]
    finally:
        ps.destroy_model_parallel()


def test_vffn_info_counts_the_pattern():
    from vffn_pretrain.info import info_from_config

    raw = cases.compose([*cases.BASE, "ffn.layers=[dense,versatile,versatile,dense]"])
    rep = info_from_config(raw)
    shape = counting.ModelShape(4, 64, 256, 4, None, 512, 32)
    ffns = [counting.FFNShape(k, 8, 2, 4) for k in ("dense", "versatile", "versatile", "dense")]
    assert rep["params_total"] == counting.count_params(shape, ffns)["params_total"]
    assert rep["flops_per_token_train"] == counting.flops_per_token(shape, ffns, training=True)
    assert rep["ffn"]["layers"] == ["dense", "versatile", "versatile", "dense"]
