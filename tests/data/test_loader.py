"""build_dataloader: DP sharding equals DP=1, and resume continues at the right sample, also when the global
batch size (or the DP size) changes. References are read straight from the dataset, in index order."""

from __future__ import annotations

import pytest
import torch

from vffn_pretrain.data.builder import build_datasets
from vffn_pretrain.data.config import DataConfig
from vffn_pretrain.data.loader import MicroBatchSampler, build_dataloader
from vffn_pretrain.data.tokenizer import build_tokenizer

SEQ = 16


@pytest.fixture
def datasets(jargon_prefix, tmp_path, gloo_group):
    """Train/valid datasets on the tokenized bundled corpus; a function so tests can rebuild (as a resumed
    run in a new process would)."""

    def build():
        cfg = DataConfig.from_dict({"paths": jargon_prefix, "cache_dir": str(tmp_path / "cache")})
        return build_datasets(cfg, seq_length=SEQ, seed=11, num_samples=(400, 40, 0),
                              tokenizer=build_tokenizer(None), padded_vocab_size=8192)

    return build


def _samples(dataset, start: int, count: int) -> torch.Tensor:
    return torch.stack([dataset[i]["tokens"] for i in range(start, start + count)])


def _global_batches(dataset, *, consumed, gbs, mbs, dp, steps, num_workers=0) -> list[torch.Tensor]:
    """Run ``steps`` global batches on ``dp`` ranks; each global batch is the ranks' micro-batches, in rank
    order, concatenated."""
    iters = [build_dataloader(dataset, consumed_samples=consumed, micro_batch_size=mbs, global_batch_size=gbs,
                              dp_rank=r, dp_size=dp, num_workers=num_workers) for r in range(dp)]
    out = []
    for _ in range(steps):
        parts = []
        for it in iters:
            for _ in range(gbs // dp // mbs):
                batch = next(it)
                assert batch["tokens"].shape == (mbs, SEQ)
                parts.append(batch["tokens"])
        out.append(torch.cat(parts))
    return out


def test_global_order_is_dataset_order(datasets):
    train, _, _ = datasets()
    batches = _global_batches(train, consumed=0, gbs=8, mbs=2, dp=1, steps=5)
    assert torch.equal(torch.cat(batches), _samples(train, 0, 40))


def test_dp2_sees_exactly_the_samples_of_dp1(datasets):
    train, _, _ = datasets()
    dp1 = _global_batches(train, consumed=0, gbs=8, mbs=2, dp=1, steps=6)
    dp2 = _global_batches(train, consumed=0, gbs=8, mbs=2, dp=2, steps=6)
    dp4 = _global_batches(train, consumed=0, gbs=8, mbs=1, dp=4, steps=6)
    for a, b, c in zip(dp1, dp2, dp4):
        assert torch.equal(a, b) and torch.equal(a, c)
    # Rank r's share of a global batch is the contiguous slice [r * gbs / dp, (r + 1) * gbs / dp).
    rank1 = build_dataloader(train, consumed_samples=0, micro_batch_size=2, global_batch_size=8, dp_rank=1,
                             dp_size=2)
    assert torch.equal(torch.cat([next(rank1)["tokens"], next(rank1)["tokens"]]), _samples(train, 4, 4))


@pytest.mark.parametrize("new_gbs, new_mbs, new_dp", [(4, 2, 1), (12, 3, 2), (8, 1, 4), (24, 4, 2)])
def test_resume_continues_at_the_consumed_sample_when_the_batch_size_changes(datasets, new_gbs, new_mbs, new_dp):
    train, _, _ = datasets()
    uninterrupted = torch.cat(_global_batches(train, consumed=0, gbs=8, mbs=2, dp=2, steps=12))  # 96 samples

    first = torch.cat(_global_batches(train, consumed=0, gbs=8, mbs=2, dp=2, steps=3))  # 24 samples
    # A new process: the datasets are rebuilt from the config (and the index cache) before resuming.
    train_again, _, _ = datasets()
    steps = (96 - 24) // new_gbs
    resumed = torch.cat(_global_batches(train_again, consumed=24, gbs=new_gbs, mbs=new_mbs, dp=new_dp, steps=steps))
    assert torch.equal(torch.cat([first, resumed]), uninterrupted[: 24 + steps * new_gbs])


def test_dataloader_workers_do_not_change_the_order(datasets):
    train, _, _ = datasets()
    plain = _global_batches(train, consumed=16, gbs=8, mbs=2, dp=2, steps=3)
    workers = _global_batches(train, consumed=16, gbs=8, mbs=2, dp=2, steps=3, num_workers=2)
    assert all(torch.equal(a, b) for a, b in zip(plain, workers))


def test_training_stops_before_a_global_batch_past_the_end(datasets):
    train, _, _ = datasets()
    n = len(train)
    it = build_dataloader(train, consumed_samples=n - 10, micro_batch_size=2, global_batch_size=4, dp_rank=0,
                          dp_size=1)
    assert len(it.sampler) == 4  # two full global batches of 4 fit in the last 10 samples
    assert len(list(it)) == 4


def test_validation_cycles(datasets):
    _, valid, _ = datasets()
    n = len(valid)
    it = build_dataloader(valid, consumed_samples=0, micro_batch_size=4, global_batch_size=4, dp_rank=0, dp_size=1,
                          cycle=True)
    seen = torch.cat([next(it)["tokens"] for _ in range(n // 4 + 3)])
    assert torch.equal(seen[n:], seen[: len(seen) - n])  # after n samples it starts over


def test_sampler_rejects_inconsistent_batch_sizes():
    with pytest.raises(ValueError, match="not a multiple"):
        MicroBatchSampler(100, consumed_samples=0, micro_batch_size=3, global_batch_size=8, dp_rank=0, dp_size=1)
    with pytest.raises(ValueError, match="dp_rank"):
        MicroBatchSampler(100, consumed_samples=0, micro_batch_size=1, global_batch_size=8, dp_rank=2, dp_size=2)
    with pytest.raises(ValueError, match="past the end"):
        MicroBatchSampler(100, consumed_samples=101, micro_batch_size=1, global_batch_size=8, dp_rank=0, dp_size=1)
