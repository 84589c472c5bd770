"""build_datasets: bundled default with cache, blends, per-split paths, start-up checks, deterministic order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.data.documents import write_jsonl
from vffn_pretrain.data.builder import build_datasets
from vffn_pretrain.data.config import DataConfig
from vffn_pretrain.data.tokenizer import build_tokenizer
from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize

NULL = "null:1000"


def _corpus(tmp_path, name: str, lo: int, hi: int, n_docs: int = 60, seed: int = 0, tokenizer: str = NULL) -> str:
    """Documents whose ids all lie in [lo, hi): a sample's ids tell which corpus it came from."""
    rng = random.Random(seed)
    docs = [" ".join(str(rng.randrange(lo, hi)) for _ in range(rng.randint(5, 30))) for _ in range(n_docs)]
    src = write_jsonl(tmp_path / f"{name}.jsonl", docs)
    prefix = str(tmp_path / name)
    run_tokenize(TokenizeOptions([str(src)], prefix, tokenizer=tokenizer))
    return prefix


def _build(cfg: dict, tmp_path, samples=(50, 0, 0), seq=16, seed=1, tokenizer=NULL, padded=1024):
    cfg = DataConfig.from_dict({"cache_dir": str(tmp_path / "cache"), "tokenizer": tokenizer, **cfg})
    return build_datasets(cfg, seq_length=seq, seed=seed, num_samples=samples, tokenizer=build_tokenizer(tokenizer),
                          padded_vocab_size=padded)


def _source(item) -> str:
    """'a' or 'b': which corpus a sample came from (ids below 100 or from 500 on; 999 is the eod)."""
    ids = item["tokens"][item["tokens"] != 999]
    assert len(ids), "a sample of only eod tokens"
    if int(ids.max()) < 100:
        return "a"
    assert int(ids.min()) >= 500, "a sample mixing the corpora"
    return "b"


def _tokens(ds, n=None) -> list[list[int]]:
    return [ds[i]["tokens"].tolist() for i in range(n if n is not None else len(ds))]


def test_default_config_uses_the_bundled_corpus_tokenized_once(tmp_path, gloo_group, capsys, monkeypatch):
    cfg = DataConfig.from_dict({"cache_dir": str(tmp_path / "cache")})
    tok = build_tokenizer(cfg.tokenizer)
    train, valid, test = build_datasets(cfg, seq_length=32, seed=3, num_samples=(200, 20, 4), tokenizer=tok,
                                        padded_vocab_size=8192)
    assert len(train) >= 200 and len(valid) >= 20 and len(test) >= 4
    item = train[0]
    assert sorted(item) == ["labels", "loss_mask", "position_ids", "tokens"]
    assert item["tokens"].shape == (32,) and int(item["tokens"].max()) < 8192
    out = capsys.readouterr().out
    assert "[data] train: 200 samples x 32 tokens" in out and "epochs" in out
    assert list((tmp_path / "cache" / "bundled").glob("*/jargon.bin"))

    # A second run reuses the tokenized corpus and the cached indices, and sees the same samples.
    from vffn_pretrain.data.tokenizing import pipeline

    monkeypatch.setattr(pipeline, "run_tokenize", lambda *a, **k: pytest.fail("re-tokenized"))
    again, _, _ = build_datasets(cfg, seq_length=32, seed=3, num_samples=(200, 20, 4), tokenizer=tok,
                                 padded_vocab_size=8192)
    assert _tokens(again, 50) == _tokens(train, 50)
    other_seed, _, _ = build_datasets(cfg, seq_length=32, seed=4, num_samples=(200, 20, 4), tokenizer=tok,
                                      padded_vocab_size=8192)
    assert _tokens(other_seed, 50) != _tokens(train, 50)


def test_weighted_blend_draws_in_proportion(tmp_path, gloo_group):
    a = _corpus(tmp_path, "a", 0, 100, seed=1)
    b = _corpus(tmp_path, "b", 500, 600, seed=2)
    train, _, _ = _build({"paths": [0.25, a, 0.75, b], "split": "1,0,0"}, tmp_path, samples=(400, 0, 0))
    from_b = [_source(train[i]) == "b" for i in range(len(train))]
    assert len(train) >= 400
    assert abs(np.mean(from_b) - 0.75) < 0.03


def test_unweighted_blend_delivers_all_requested_samples_beyond_one_epoch(tmp_path, gloo_group):
    a = _corpus(tmp_path, "a", 0, 100, seed=1)
    b = _corpus(tmp_path, "b", 500, 600, n_docs=180, seed=2)
    train, _, _ = _build({"paths": [a, b], "split": "1,0,0"}, tmp_path, samples=(1000, 0, 0))
    # Together the corpora hold about 4,000 tokens (250 samples of 16): megatron-core's own unweighted blend
    # would stop at one epoch; with weights from the token counts it repeats the data.
    assert len(train) >= 1000
    from_b = np.mean([_source(train[i]) == "b" for i in range(len(train))])
    assert 0.65 < from_b < 0.85  # b holds three quarters of the documents


def test_per_split_paths(tmp_path, gloo_group):
    a = _corpus(tmp_path, "a", 0, 100, seed=1)
    b = _corpus(tmp_path, "b", 500, 600, seed=2)
    train, valid, test = _build({"train_paths": a, "valid_paths": b}, tmp_path, samples=(30, 10, 0))
    assert test is None
    assert {_source(train[i]) for i in range(len(train))} == {"a"}
    assert {_source(valid[i]) for i in range(len(valid))} == {"b"}


def test_split_follows_the_split_string(tmp_path, gloo_group):
    a = _corpus(tmp_path, "a", 0, 100, n_docs=100, seed=1)
    train, valid, test = _build({"paths": a, "split": "80,20,0"}, tmp_path, samples=(20, 5, 0))
    assert test is None
    assert train.indices.tolist() == list(range(80)) and valid.indices.tolist() == list(range(80, 100))


def test_tokenizer_larger_than_the_model_vocab(tmp_path, gloo_group):
    a = _corpus(tmp_path, "a", 0, 100)
    with pytest.raises(ValueError, match=r"^data\.tokenizer: null:1000 has 1000 ids but the model's padded vocab"):
        _build({"paths": a}, tmp_path, padded=512)


def test_token_ids_beyond_the_model_vocab(tmp_path, gloo_group):
    a = _corpus(tmp_path, "a", 0, 1000)
    with pytest.raises(ValueError, match=r"^data\.paths: .*a\.bin: token id \d+ .* padded vocab size 512"):
        _build({"paths": a, "check_tokenizer": False}, tmp_path, tokenizer="null:300", padded=512)
    train, _, _ = _build({"paths": a, "check_token_ids": False, "check_tokenizer": False}, tmp_path,
                         tokenizer="null:300", padded=512)
    assert len(train) >= 50


def test_token_ids_beyond_the_tokenizer_vocab(tmp_path, gloo_group):
    b = _corpus(tmp_path, "b", 500, 600)
    with pytest.raises(ValueError, match=r"^data\.tokenizer: .*b\.bin holds token id \d+"):
        _build({"paths": b, "check_tokenizer": False}, tmp_path, tokenizer="null:550", padded=1024)


def test_data_from_another_tokenizer_is_refused(tmp_path, gloo_group):
    a = _corpus(tmp_path, "a", 0, 100)
    with pytest.raises(ValueError, match=r"^data\.tokenizer: .*a was tokenized with null:1000 .* end-of-document "
                                         r"id is 999, null:1001's is 1000"):
        _build({"paths": a}, tmp_path, tokenizer="null:1001")
    train, _, _ = _build({"paths": a, "check_tokenizer": False}, tmp_path, tokenizer="null:1001")
    assert len(train) > 0


def test_split_without_documents_but_with_samples_is_an_error(tmp_path, gloo_group):
    tiny = _corpus(tmp_path, "tiny", 0, 100, n_docs=3)
    with pytest.raises(ValueError, match=r"^data\.split: the valid split .* has no tokens"):
        _build({"paths": tiny}, tmp_path, samples=(10, 5, 0))
    # Asking nothing of the empty splits is fine: they are simply not built.
    train, valid, test = _build({"paths": tiny}, tmp_path, samples=(10, 0, 0))
    assert len(train) >= 10 and valid is None and test is None


def test_requires_a_process_group(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already set up in this session")
    with pytest.raises(RuntimeError, match="process group"):
        _build({"paths": "/nonexistent"}, tmp_path)


def test_indices_that_fit_one_by_one_but_not_together_are_refused_naming_the_key(tmp_path):
    """Every blend component's indices stay in memory for the whole run: a request is refused when their sum
    (plus the largest one's building) exceeds the memory, even though each component alone fits."""
    from vffn_pretrain.data.checks import index_memory, plan_splits

    prefixes = [_corpus(tmp_path, f"c{i}", 0, 100, seed=i) for i in range(4)]
    blend = (prefixes, [1.0] * 4)
    samples, seq = (40_000, 0, 0), 16
    plans = plan_splits([blend] * 3, "100,0,0", samples, seq, key="data.paths", memory=2**40)
    each = [index_memory(c.epochs, c.documents, c.tokens, c.samples, seq) for c in plans[0].components]
    one = max(m.peak for m in each)  # what the check of one component at a time asks for
    together = sum(m.resident for m in each) + max(m.peak - m.resident for m in each)
    assert together > one
    with pytest.raises(ValueError) as err:
        plan_splits([blend] * 3, "100,0,0", samples, seq, key="data.paths", memory=one)
    assert str(err.value).startswith("train.max_steps: the indices megatron-core builds for every split"), err.value
    assert "more than the" in str(err.value)
    assert plan_splits([blend] * 3, "100,0,0", samples, seq, key="data.paths", memory=2 * together)


def _index_arrays(dataset) -> list[np.ndarray]:
    """The index arrays megatron-core holds for a (blended) GPTDataset."""
    if hasattr(dataset, "datasets"):  # BlendedDataset
        return [dataset.dataset_index, dataset.dataset_sample_index,
                *[a for d in dataset.datasets for a in _index_arrays(d)]]
    return [dataset.document_index, dataset.sample_index, dataset.shuffle_index]


@pytest.mark.parametrize("samples", [100, 2600])
def test_the_index_estimate_bounds_what_megatron_core_builds_and_a_cache_hit_costs_nothing(tmp_path, gloo_group,
                                                                                          samples):
    """The estimate against megatron-core's real arrays on a cache miss: never below them (a check that
    underestimates lets a run into the OOM killer), within a small factor (one that overestimates refuses runs
    that fit). A request megatron-core will find in its cache is memory-mapped and passes with any memory."""
    from vffn_pretrain.data import builder, checks

    prefixes = [_corpus(tmp_path, f"c{i}", 0, 100, seed=i) for i in range(2)]
    cfg = DataConfig.from_dict({"cache_dir": str(tmp_path / "cache"), "tokenizer": NULL, "paths": prefixes,
                                "split": "100,0,0"})
    seq, seed = 16, 1
    train, _, _ = build_datasets(cfg, seq_length=seq, seed=seed, num_samples=(samples, 0, 0),
                                 tokenizer=build_tokenizer(NULL), padded_vocab_size=1024)
    actual = sum(int(np.asarray(a).nbytes) for a in _index_arrays(train))
    blend = builder._explicit_weights((prefixes, None))
    plans = checks.plan_splits([blend] * 3, "100,0,0", (samples, 0, 0), seq, key="data.paths", memory=2**40)
    c = plans[0].components
    estimate = sum(checks.index_memory(x.epochs, x.documents, x.tokens, x.samples, seq).resident for x in c) + \
        checks.blend_index_bytes(samples, len(c))
    assert actual <= estimate <= 3 * actual + 4096, (actual, estimate)

    cached = builder._cached_indices(cfg, seed, seq, "100,0,0")
    assert all(cached(p, "train", x.samples) for p, x in zip(prefixes, c))
    assert not cached(prefixes[0], "train", 10 * samples) and not builder._cached_indices(cfg, seed + 1, seq,
                                                                                         "100,0,0")(
        prefixes[0], "train", c[0].samples)
    with pytest.raises(ValueError):
        checks.plan_splits([blend] * 3, "100,0,0", (samples, 0, 0), seq, key="data.paths", memory=estimate // 4)
    assert checks.plan_splits([blend] * 3, "100,0,0", (samples, 0, 0), seq, key="data.paths", memory=1,
                              cached=cached)
