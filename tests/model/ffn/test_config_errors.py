"""Bad FFN configurations are start-up errors (ConfigError) that name the offending key."""

import pytest

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import build_model, build_transformer_config
from vffn_pretrain.parallel.config import ParallelConfig

TINY = ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=96, num_attention_heads=4, vocab_size=128)

BAD = [
    (dict(kind="versatile", num_experts=4, top_k=5), 96, 1, "ffn.top_k"),  # k > N
    (dict(kind="width_only", num_experts=5, top_k=2), 96, 1, "ffn.num_experts"),  # N does not divide d_ff
    (dict(kind="moe", num_experts=64, top_k=2), 96, 1, "ffn.num_experts"),
    (dict(kind="versatile", num_experts=8), 96, 5, "parallel.tp"),  # TP does not divide d_ff
    (dict(kind="kloop", loops=2), 96, 5, "parallel.tp"),
    (dict(kind="versatile", max_loops=0), 96, 1, "ffn.max_loops"),  # L_max < 1
    (dict(kind="depth_only", max_loops=0), 96, 1, "ffn.max_loops"),
    (dict(kind="versatile", tau0=0.5, tau_min=1.0), 96, 1, "ffn.tau_min"),  # tau_min > tau0
    (dict(kind="kloop", loops=0), 96, 1, "ffn.loops"),
    (dict(kind="versatile", balance_coeff=-1.0), 96, 1, "ffn.balance_coeff"),
    (dict(kind="nonsense"), 96, 1, "ffn.kind"),
]


@pytest.mark.parametrize("kw, d_ff, tp, key", BAD)
def test_validate_names_the_key(kw, d_ff, tp, key):
    with pytest.raises(ConfigError) as err:
        FFNConfig(**kw).validate(d_ff, tp)
    assert err.value.key == key
    assert key in str(err.value)


@pytest.mark.parametrize("kw, key", [(dict(kind="versatile", num_experts=4, top_k=5), "ffn.top_k"),
                                     (dict(kind="versatile", num_experts=5), "ffn.num_experts"),
                                     (dict(kind="depth_only", max_loops=0), "ffn.max_loops"),
                                     (dict(kind="versatile", tau0=0.5, tau_min=1.0), "ffn.tau_min"),
                                     (dict(kind="moe", num_experts=5), "ffn.num_experts")])
def test_model_build_fails_at_startup(single_rank, kw, key):
    with pytest.raises(ConfigError) as err:
        build_model(TINY, FFNConfig(**kw), ParallelConfig())
    assert err.value.key == key


def test_moe_layout_errors():
    with pytest.raises(ConfigError) as err:  # megatron's MoE layer refuses TP without SP in training
        build_transformer_config(TINY, ParallelConfig(tp=2), ffn=FFNConfig(kind="moe", num_experts=4))
    assert err.value.key == "parallel.sp"
    with pytest.raises(ConfigError) as err:
        build_transformer_config(TINY, ParallelConfig(ep=3), ffn=FFNConfig(kind="moe", num_experts=4))
    assert err.value.key == "parallel.ep"
