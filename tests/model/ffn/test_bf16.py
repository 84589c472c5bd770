"""bf16 parameters: the layer runs (routing, Gumbel, mixing in fp32; matmuls in bf16) in training and eval, and
stays close to the fp32 layer with the same weights."""

import pytest
import torch

from tests.model.ffn.tiny_layers import SEED, make_ffn
from vffn_pretrain.model import noise


@pytest.mark.parametrize("kind", ["versatile", "width_only", "depth_only"])
@pytest.mark.parametrize("training", [True, False])
def test_bf16_close_to_fp32(single_rank, kind, training):
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        mod = make_ffn(kind, setup=False, dtype=dtype)
        mod.train(training)
        h = torch.randn(8, 2, mod.config.hidden_size, generator=torch.Generator().manual_seed(2)).to(dtype)
        h.requires_grad_(training)
        noise.seed_microbatch(SEED, (0, 0))
        y, _ = mod(h)
        assert y.dtype == dtype
        if training:
            y.float().square().sum().backward()
            assert all(p.grad is not None and p.grad.dtype == dtype for p in mod.parameters())
        outs.append(y.detach().float())
    # same init (fp32 drawn, cast) and same decisions unless a bf16 rounding flips a near tie
    close = (outs[0] - outs[1]).abs() <= 0.05 + 0.02 * outs[0].abs()
    assert close.float().mean() > 0.9
