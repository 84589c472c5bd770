"""Activation recompute (megatron-core's full and selective "mlp" settings) replays VersatileFFN exactly: the same
Gumbel noise (seeded from the restored generator state), hence the same gradients; statistics are counted once."""

import pytest
import torch

from vffn_pretrain.model import noise
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import RecomputeConfig, build_model
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all

SEED, SEQ, MBS, VOCAB = 7, 16, 2, 128
MODEL = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB)


def grads_after_step(recompute: RecomputeConfig | None, kind: str):
    seed_all(SEED)
    model = build_model(MODEL, FFNConfig(kind=kind, balance_coeff=0.1), ParallelConfig(), recompute=recompute)[0]
    model.train()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (MBS, SEQ), generator=gen)
    pos = torch.arange(SEQ).expand(MBS, SEQ)
    for mb in range(2):
        noise.seed_microbatch(SEED, (0, mb))
        loss = model(tokens, pos, None, labels=tokens.roll(1, 1)).sum()
        # megatron's checkpoint restores the generator it saved; draws in between must not matter
        torch.rand(3)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, state.collect_stats([model])


@pytest.mark.parametrize("kind", ["versatile", "depth_only"])
def test_recompute_gives_identical_gradients(single_rank, kind):
    base, base_stats = grads_after_step(None, kind)
    for cfg in (RecomputeConfig(granularity="full", method="uniform", num_layers=1),
                RecomputeConfig(granularity="selective", modules=("mlp",))):
        grads, stats = grads_after_step(cfg, kind)
        for name, g in base.items():
            assert torch.allclose(grads[name], g, atol=1e-7, rtol=0), (cfg.granularity, name)
        for layer in (1, 2):
            assert stats[layer]["tokens"] == 2 * MBS * SEQ  # not counted again in the recompute pass
            assert stats[layer]["loop_hist"] == base_stats[layer]["loop_hist"]
