"""The Switch balance loss (docs/method.md §3.4, §12 #6): its gradient on the router is the analytic one, at the module,
through megatron's schedule with per-token loss scaling (1 / total tokens after the backward pass), and with the
statistics reduced over data-parallel ranks; it never changes the forward output or the reported loss."""

from functools import partial

import pytest
import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from tests.model.ffn.parity_cases import SEED, analytic_balance_grad, dp_balance_case, switch_value
from tests.model.ffn.tiny_layers import make_ffn
from vffn_pretrain.model import noise
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.ffn.moe import BalancedTopKRouter
from vffn_pretrain.model.ffn.versatile import VersatileFFN
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all
from vffn_pretrain.testing.batches import split_global_batch, synthetic_global_batch
from vffn_pretrain.training.optim import OptimConfig, build_optimizer, wrap_ddp
from vffn_pretrain.training.step import forward_step


@pytest.mark.parametrize("kind", ["versatile", "width_only"])
def test_module_router_gradient_is_analytic(single_rank, kind):
    alpha = 0.3
    mod = make_ffn(kind, setup=False, balance_loss=True, balance_coeff=alpha)
    mod.train()
    h = torch.randn(8, 2, mod.config.hidden_size, generator=torch.Generator().manual_seed(5))
    noise.seed_microbatch(SEED, (0, 0))
    y, _ = mod(h)
    (y * 0).sum().backward()
    expected = analytic_balance_grad(h.reshape(-1, h.shape[-1]), mod.router.weight.detach(), mod.ffn_cfg.top_k,
                                     alpha)
    assert torch.allclose(mod.router.weight.grad.double(), expected, atol=1e-6, rtol=1e-5)
    assert float(expected.abs().max()) > 1e-2
    reported = state.collect_stats([mod])[mod.layer_number]["balance_loss"]
    assert reported == pytest.approx(switch_value(h.reshape(-1, h.shape[-1]), mod.router.weight.detach(), 2),
                                     rel=1e-5)


def test_balance_loss_leaves_the_output_unchanged(single_rank):
    outs = []
    for on in (False, True):
        mod = make_ffn("versatile", setup=False, balance_loss=on, balance_coeff=0.5)
        mod.train()
        h = torch.randn(8, 2, mod.config.hidden_size, generator=torch.Generator().manual_seed(5))
        noise.seed_microbatch(SEED, (0, 0))
        outs.append(mod(h)[0])
    assert torch.equal(outs[0], outs[1])


SEQ, MBS, NUM_MB, VOCAB = 16, 2, 2, 128


@pytest.mark.parametrize("kind", ["versatile", "moe"])
def test_schedule_scales_balance_gradient_per_token(single_rank, kind):
    """Through get_forward_backward_func with calculate_per_token_loss and megatron DDP: the router gradient
    added by the balance loss is sum over micro-batches m of grad(alpha / num_layers * L_bal_m * T_m) / T_total."""
    parallel = ParallelConfig()
    seed_all(SEED)
    ffn = FFNConfig(kind=kind, balance_loss=True, balance_coeff=1.0)
    model = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB)
    chunks = build_model(model, ffn, parallel)
    ddp = wrap_ddp(chunks, parallel)
    build_optimizer(ddp, OptimConfig(), parallel)  # wires finalize_model_grads (the 1/T scaling) into config
    owner = VersatileFFN if kind == "versatile" else BalancedTopKRouter
    routers = {}  # layer -> (router weight, captured router inputs per micro-batch)
    for m in chunks[0].modules():
        if isinstance(m, owner):
            weight = m.router.weight if kind == "versatile" else m.weight
            inputs = []
            m.register_forward_pre_hook(lambda mod, args, inputs=inputs: inputs.append(args[0].detach().clone()))
            routers[m.layer_number] = (weight, inputs)
    batch = synthetic_global_batch(SEED, 0, MBS * NUM_MB, SEQ, VOCAB)
    micro = split_global_batch(batch, step=0, dp_rank=0, dp_size=1, micro_batch_size=MBS)

    def run(alpha):
        for m in chunks[0].modules():  # each layer holds its own copy of the ffn.* settings
            if hasattr(m, "ffn_cfg"):
                m.ffn_cfg.balance_coeff = alpha
        ddp[0].zero_grad_buffer()
        get_forward_backward_func()(
            forward_step_func=partial(forward_step, noise_seed=SEED), data_iterator=iter(micro), model=ddp[0],
            num_microbatches=NUM_MB, seq_length=SEQ, micro_batch_size=MBS, decoder_seq_length=SEQ,
            forward_only=False)
        return {n: w.main_grad.detach().clone() for n, (w, _) in routers.items()}

    with_balance = run(1.0)
    for _, inputs in routers.values():
        inputs.clear()
    without = run(0.0)
    total_tokens = MBS * NUM_MB * SEQ
    # The last layer only: an earlier layer's router also gets the later layers' balance gradient through the
    # residual stream (their routing depends on its output), which the direct formula does not include.
    last = max(routers)
    for n, (weight, inputs) in [(last, routers[last])]:
        assert len(inputs) == NUM_MB
        # alpha / num_layers: the per-layer losses are averaged over the layers
        expected = sum(analytic_balance_grad(x.reshape(-1, x.shape[-1]), weight.detach(), ffn.top_k,
                                             1.0 / model.num_layers) for x in inputs) / total_tokens
        got = (with_balance[n] - without[n]).double()
        assert float(expected.abs().max()) > 1e-4
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4), n


def test_balance_statistics_are_global_over_dp(rank_pools):
    for out in rank_pools(2).run(dp_balance_case):
        err, scale = out["grad"]
        assert err <= 1e-5 * scale + 1e-6
        assert out["tokens"] == 2 * 8 * 2
        assert out["expert_load"] < 1e-12
        assert out["balance"][0] == pytest.approx(out["balance"][1], rel=1e-5)
