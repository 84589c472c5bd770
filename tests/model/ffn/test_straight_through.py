"""The hard Gumbel-softmax straight-through estimator (docs/method.md §4.2, §5, §12 #10).

Forward: the layer output is exactly lambda * Y_width + (1 - lambda) * H^(l) for the sampled l (no soft mixture
leaks into the value). Backward: the gradient reaching the loop head is the soft Gumbel-softmax formula
dL/dP = (1/tau) y ⊙ (u - <y, u>), u_l = dL/dp_l = (1 - lambda) <G, H^(l)> - (l / L) <G, Y_width - Y_depth>,
y = softmax((P + g) / tau), written out here by hand.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.model.ffn.tiny_layers import LAYER, SEED, make_ffn
from vffn_pretrain.model import noise
from vffn_pretrain.model.ffn.functional import router_logits

S, B = 8, 2


def _run(kind: str, tau: float, token_sparse: bool = True):
    mod = make_ffn(kind, setup=False, token_sparse_recursion=token_sparse)
    mod.train()
    mod.tau = tau
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(S, B, mod.config.hidden_size, generator=gen)
    g_up = torch.randn(S, B, mod.config.hidden_size, generator=gen)
    noise.seed_microbatch(SEED, (0, 0))
    y, _ = mod(h)
    (y * g_up).sum().backward()

    L = mod.max_loops
    noise.seed_microbatch(SEED, (0, 0))
    g = noise.gumbel_noise((S, B, L), LAYER, h.device)
    with torch.no_grad():
        P = router_logits(h, mod.loop_head.weight)
        idx = (P + g).argmax(-1)
        states, z, a1 = [], h, None
        for i in range(L):
            a, z = mod._loop(z)
            a1 = a if i == 0 else a1
            states.append(z)
        stacked = torch.stack(states, -2)  # [S, B, L, h]
        y_depth = stacked.gather(-2, idx[..., None, None].expand(S, B, 1, h.shape[-1])).squeeze(-2)
    return mod, h, g_up, P, g, idx, stacked, y_depth, a1, y


@pytest.mark.parametrize("token_sparse", [False, True])
def test_forward_is_exactly_the_sampled_loop_mixed_with_width(single_rank, token_sparse):
    mod, h, _, P, g, idx, _, y_depth, a1, y = _run("versatile", tau=0.5, token_sparse=token_sparse)
    L = mod.max_loops
    with torch.no_grad():
        gates, top_idx, _ = mod._route(h)
        y_width = h + mod._expert_delta(a1, gates, top_idx)  # the width form itself is checked elsewhere
        lam = ((L - (idx + 1).to(torch.float32)) / L).unsqueeze(-1)
        expected = lam * y_width + (1 - lam) * y_depth
    assert len(set(idx.flatten().tolist())) > 1, "the test needs several sampled loop counts"
    if token_sparse:  # the loops run on row subsets, so matmul rounding may differ in the last bit
        assert torch.allclose(y, expected, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(y, expected)


def test_forward_depth_only_is_exactly_the_sampled_state(single_rank):
    _, _, _, _, _, _, _, y_depth, _, y = _run("depth_only", tau=0.5)
    assert torch.equal(y, y_depth)


def _soft_gumbel_grad(P, g, tau, u, h):
    """dL/dW_loop from dL/dp = u through y = softmax((P + g) / tau), float64."""
    y = torch.softmax((P.double() + g.double()) / tau, -1)
    dP = y * (u - (y * u).sum(-1, keepdim=True)) / tau
    return torch.einsum("sbl,sbd->ld", dP, h.double())


def test_loop_head_gradient_is_the_soft_gumbel_formula(single_rank):
    tau = 0.8
    mod, h, g_up, P, g, idx, stacked, y_depth, a1, _ = _run("versatile", tau=tau)
    L = mod.max_loops
    with torch.no_grad():
        gates, top_idx, _ = mod._route(h)
        y_width = h + mod._expert_delta(a1, gates, top_idx)
    lam = ((L - (idx + 1)).double() / L).unsqueeze(-1)
    G = g_up.double()
    ell = torch.arange(1, L + 1, dtype=torch.float64)
    u = (1 - lam) * torch.einsum("sbd,sbld->sbl", G, stacked.double()) \
        - ell / L * (G * (y_width.double() - y_depth.double())).sum(-1, keepdim=True)
    expected = _soft_gumbel_grad(P, g, tau, u, h)
    got = mod.loop_head.weight.grad.double()
    assert float((got - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max())) + 2e-6
    assert float(expected.abs().max()) > 1e-3


def test_loop_head_gradient_depth_only(single_rank):
    tau = 2.0
    mod, h, g_up, P, g, _, stacked, _, _, _ = _run("depth_only", tau=tau)
    u = torch.einsum("sbd,sbld->sbl", g_up.double(), stacked.double())
    expected = _soft_gumbel_grad(P, g, tau, u, h)
    got = mod.loop_head.weight.grad.double()
    assert float((got - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max())) + 2e-6


def test_sampling_follows_the_categorical(single_rank):
    """The forward count is a sample of Categorical(softmax(P)) whatever tau is (docs/method.md §4.2): over many tokens
    with fixed logits the empirical frequencies match softmax(P)."""
    logits = torch.tensor([0.5, -0.3, 1.2, 0.0])
    counts = torch.zeros(4)
    for key in range(20):
        noise.seed_microbatch(SEED, (key, 0))
        gnoise = noise.gumbel_noise((2000, 4), 1, torch.device("cpu"))
        counts += F.one_hot((logits + gnoise).argmax(-1), 4).sum(0)
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.softmax(logits, 0), atol=0.01)


def test_sparse_and_masked_width_forms_agree(single_rank):
    """The TP=1 sparse width product (one matmul per expert) equals the masked-dense one used under TP."""
    from vffn_pretrain.model.ffn.functional import mask_units, swiglu

    mod = make_ffn("versatile", setup=False)
    h = torch.randn(S, B, mod.config.hidden_size, generator=torch.Generator().manual_seed(8))
    a1 = swiglu(mod.linear_fc1(mod.norm(h))[0])
    gates, top_idx, _ = mod._route(h)
    sparse = mod._expert_delta(a1, gates, top_idx)
    masked = mod.linear_fc2(mask_units(a1, gates, mod.seg_expert, mod.seg_width))[0]
    assert torch.allclose(sparse, masked, atol=1e-7, rtol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), (mod.linear_fc2.weight, mod.router.weight), retain_graph=True)
             for out in (sparse, masked)]
    for g_sparse, g_masked in zip(*grads):
        assert torch.allclose(g_sparse, g_masked, atol=1e-7, rtol=1e-5)
