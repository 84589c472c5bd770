"""Every FFN kind (the baselines and ablations of conf/ffn) trains: on a tiny deterministic next-token task
(next = 5*t + 3 mod V) a 2-layer model's loss falls well below its start within a few dozen AdamW steps."""

import pytest
import torch

from vffn_pretrain.model import noise
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import seed_all

VOCAB, SEQ, BATCH, STEPS = 128, 16, 8, 30

KINDS = {
    "dense": FFNConfig(kind="dense"),
    "kloop2": FFNConfig(kind="kloop", loops=2),
    "moe": FFNConfig(kind="moe"),
    "width_only": FFNConfig(kind="width_only"),
    "depth_only": FFNConfig(kind="depth_only"),
    "versatile": FFNConfig(kind="versatile", tau_decay_to_end=True),
}


def batch(step: int):
    gen = torch.Generator().manual_seed(step)
    seq = [torch.randint(0, VOCAB, (BATCH,), generator=gen)]
    for _ in range(SEQ):
        seq.append((5 * seq[-1] + 3) % VOCAB)
    data = torch.stack(seq, 1)
    return data[:, :-1], data[:, 1:]


@pytest.mark.parametrize("name", sorted(KINDS))
def test_loss_falls(single_rank, name):
    seed_all(0)
    model = build_model(ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB),
                        KINDS[name], ParallelConfig())[0]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    pos = torch.arange(SEQ).expand(BATCH, SEQ)
    losses = []
    for step in range(STEPS):
        state.set_training_step([model], step, STEPS)
        tokens, labels = batch(step)
        noise.seed_microbatch(0, (step, 0))
        loss = model(tokens, pos, None, labels=labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
