"""ffn.blend_in_steps (docs/method.md §15): a converted model outputs H^(1) + s (Y - H^(1)) with s = step / B, so
at step 0 it is the dense model it came from, for every shared-weight kind; from step B on it is the kind itself,
computed exactly as without the option."""

from __future__ import annotations

import pytest
import torch

from tests.model.ffn.tiny_layers import make_ffn
from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.model import noise
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.model.kinds import traits
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all
from vffn_pretrain.testing.dense_conversion import convert_dense_state_dict

TINY = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128)
KINDS = ("versatile", "depth_only", "width_only", "kloop")
BLEND = 10


def _loss(model, training: bool) -> float:
    """Mean next-token cross-entropy of one fixed batch, in the model's dtype (train mode: the micro-batch's
    Gumbel noise is fixed too)."""
    model.train(training)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 128, (2, 16), generator=gen)
    labels = torch.randint(0, 128, (2, 16), generator=gen)
    noise.seed_microbatch(0, (0, 0))
    with torch.no_grad():
        logits = model(tokens, torch.arange(16).expand(2, 16), None)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()


@pytest.fixture
def dense64(single_rank):
    seed_all(0)
    return build_model(TINY, FFNConfig(kind="dense"), ParallelConfig(), params_dtype=torch.float64)[0]


def _converted(dense, kind: str, **ffn_kw):
    seed_all(1)  # the new heads get their own fresh initialisation, as in train.init_from
    model = build_model(TINY, FFNConfig(kind=kind, **ffn_kw), ParallelConfig(), params_dtype=torch.float64)[0]
    model.load_state_dict(convert_dense_state_dict(dense.state_dict(), kind), strict=False)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_converted_model_at_step_0_has_the_dense_loss(dense64, kind):
    dense = {training: _loss(dense64, training) for training in (False, True)}
    shocked = _converted(dense64, kind)  # the paper's conversion: the new function from the first step
    state.set_training_step([shocked], 0, 100)
    blended = _converted(dense64, kind, blend_in_steps=BLEND)
    state.set_training_step([blended], 0, 100)
    for training in (False, True):  # eval mode (argmax loops) and train mode (sampled loops)
        assert abs(_loss(blended, training) - dense[training]) < 1e-6
    # Without the blend-in the converted model starts away from dense (why the option exists).
    assert max(abs(_loss(shocked, t) - dense[t]) for t in (False, True)) > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_mid_ramp_output_is_the_blend_and_after_the_ramp_the_kind_itself(single_rank, kind):
    x = torch.randn(6, 2, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = make_ffn(kind, dtype=torch.float64)
    blended = make_ffn(kind, dtype=torch.float64, blend_in_steps=4)
    # H^(1), the dense layer: one loop and no width path (k-loop: ffn.loops=1).
    one_loop = make_ffn(kind, dtype=torch.float64, **({"loops": 1} if traits(kind).fixed_loops else {}))
    one_loop.force_loops = 1 if traits(kind).adaptive_depth else None
    one_loop.disable_width = True
    for training in (False, True):
        for mod in (plain, blended, one_loop):
            mod.train(training)

        def out(mod):
            noise.seed_microbatch(0, (0, 0))
            with torch.no_grad():
                return mod(x)[0]

        y, h1 = out(plain), out(one_loop)
        assert (y - h1).abs().max() > 1e-3  # the kind's output is not the dense layer's
        for step, s in ((0, 0.0), (1, 0.25), (3, 0.75)):
            state.set_training_step([blended], step, 100)
            assert blended.blend == s
            torch.testing.assert_close(out(blended), h1 + s * (y - h1), rtol=0, atol=1e-9)  # the gates are fp32
        for step in (4, 50):  # the ramp is over: bit for bit the kind without the option
            state.set_training_step([blended], step, 100)
            assert blended.blend == 1.0
            assert torch.equal(out(blended), y)


def test_blend_weight_is_a_function_of_the_step():
    cfg = FFNConfig(blend_in_steps=4)
    assert [state.blend_weight(cfg, t) for t in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert state.blend_weight(FFNConfig(), 0) == 1.0  # 0: the paper's conversion, no ramp


@pytest.mark.parametrize("value", [-1, 2.5, True, "10", None])
def test_blend_in_steps_must_be_a_non_negative_integer(value):
    with pytest.raises(ConfigError, match=r"ffn\.blend_in_steps"):
        FFNConfig(blend_in_steps=value).validate(d_ff=128)
