"""Eval mode (docs/method.md §4.3, §5, §6 Algorithm 2): argmax loop counts, no noise, per-token early exit, no width path
for tokens at L_max, and a batch result equal to computing each token alone. (The float64 reference comparison
of eval outputs is in test_reference_parity.)"""

import torch

from tests.model.ffn.tiny_layers import make_ffn
from vffn_pretrain.model import noise
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.functional import router_logits, swiglu

S, B = 8, 2


def _eval_module(kind="versatile", **kw):
    mod = make_ffn(kind, setup=False, **kw)
    mod.eval()
    h = torch.randn(S, B, mod.config.hidden_size, generator=torch.Generator().manual_seed(11))
    return mod, h


def test_batch_equals_each_token_alone(single_rank):
    mod, h = _eval_module()
    y, _ = mod(h)
    alone = torch.stack([torch.stack([mod(h[s:s + 1, b:b + 1])[0][0, 0] for b in range(B)]) for s in range(S)])
    assert torch.allclose(y, alone, atol=2e-6, rtol=0)


def test_no_noise_in_eval(single_rank):
    mod, h = _eval_module()
    noise.seed_microbatch(1, (0, 0))
    y1, _ = mod(h)
    noise.seed_microbatch(2, (7, 3))
    y2, _ = mod(h)
    assert torch.equal(y1, y2)


def test_early_exit_work_and_width_skip(single_rank):
    mod, h = _eval_module()
    mod(h)
    loops = router_logits(h, mod.loop_head.weight).argmax(-1).flatten() + 1
    L = mod.max_loops
    assert 0 < int((loops == L).sum()) < loops.numel(), "the test needs tokens at L_max and below"
    # loop l ran exactly on the tokens whose own count is >= l
    assert mod.last_loop_work == [int((loops >= i).sum()) for i in range(1, int(loops.max()) + 1)]
    assert sum(mod.last_loop_work) == int(loops.sum())
    # tokens at L_max never entered the width path
    assert mod.last_width_tokens == int((loops < L).sum())
    hist = state.collect_stats([mod])[mod.layer_number]["loop_hist"]
    assert hist == torch.bincount(loops - 1, minlength=L).tolist()


def _dense(mod, h):
    with torch.no_grad():
        return h + mod.linear_fc2(swiglu(mod.linear_fc1(mod.norm(h))[0]))[0]


def test_forced_one_loop_without_width_is_the_dense_ffn(single_rank):
    mod, h = _eval_module()
    state.set_inference_overrides([mod], force_loops=1, disable_width=True)
    for training in (False, True):
        mod.train(training)
        with torch.no_grad():
            y, _ = mod(h)
        assert torch.allclose(y, _dense(mod, h), atol=1e-6, rtol=0)
    assert mod.last_width_tokens == 0


def test_forced_loop_counts(single_rank):
    mod, h = _eval_module()
    L = mod.max_loops
    state.set_inference_overrides([mod], force_loops=L)
    y, _ = mod(h)
    assert mod.last_loop_work == [S * B] * L and mod.last_width_tokens == 0
    z = h
    for _ in range(L):
        z = _dense(mod, z)
    assert torch.allclose(y, z, atol=1e-5, rtol=0)
    state.set_inference_overrides([mod], force_loops=1)
    mod(h)
    assert mod.last_loop_work == [S * B] and mod.last_width_tokens == S * B
    stats = state.collect_stats([mod])[mod.layer_number]
    assert stats["loop_hist"] == [S * B, 0, 0, S * B]  # the L-loop call, then the 1-loop call
    assert stats["mean_lambda"] == (0.0 + 0.75) / 2


def test_depth_only_eval_never_routes(single_rank):
    mod, h = _eval_module("depth_only")
    y, _ = mod(h)
    loops = router_logits(h, mod.loop_head.weight).argmax(-1) + 1
    z, states = h, []
    for _ in range(mod.max_loops):
        z = _dense(mod, z)
        states.append(z)
    expected = torch.stack(states, -2).gather(-2, (loops - 1)[..., None, None].expand(S, B, 1, h.shape[-1]))
    assert torch.allclose(y, expected.squeeze(-2), atol=1e-5, rtol=0)
    assert mod.last_width_tokens == 0
