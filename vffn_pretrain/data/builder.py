"""``build_datasets``: the train/valid/test datasets of a run, with megatron-core's ``GPTDataset`` and
``BlendedMegatronDatasetBuilder``.

Collective: every rank of the default process group calls it (a world of one is fine). Rank 0 goes first: it
tokenizes the bundled corpus if needed, runs the start-up checks (``checks``) and prints the epochs implied;
then megatron-core's builder builds (and caches under ``cache_dir/indices``) the sample indices on rank 0
before the other ranks load them. A failure on rank 0 is sent to every rank, so all raise the same error
instead of waiting forever at a barrier.

Sample order is a pure function of the data, ``split``, seed, sequence length and requested sample counts
(megatron-core shuffles documents and samples with ``numpy.random.RandomState(seed)``): two runs with the same
config see the same samples in the same order, which is what makes resume exact (see ``loader``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vffn_pretrain.data import checks
from vffn_pretrain.data.bundled import bundled_cache_prefix, ensure_bundled_prefix
from vffn_pretrain.data.config import BUNDLED, Blend, DataConfig


def _resolve_prefix(prefix: str, cfg: DataConfig, tokenizer, *, materialize: bool) -> str:
    if prefix == BUNDLED:
        if materialize:
            return str(ensure_bundled_prefix(cfg.cache_dir, tokenizer, workers=cfg.bundled_tokenize_workers))
        return str(bundled_cache_prefix(cfg.cache_dir, tokenizer))
    return str(Path(prefix).expanduser().resolve())


def _resolve_blend(blend: Blend | None, cfg: DataConfig, tokenizer, materialize: bool) -> Blend | None:
    if blend is None:
        return None
    prefixes, weights = blend
    return [_resolve_prefix(p, cfg, tokenizer, materialize=materialize) for p in prefixes], weights


def _explicit_weights(blend: Blend | None) -> Blend | None:
    """Give an unweighted multi-prefix blend weights proportional to each prefix's tokens.

    megatron-core would otherwise build one epoch of each prefix and cap the blend at their total, so a run
    longer than one epoch would silently get fewer samples than it asked for. A single prefix needs no weight.
    """
    from vffn_pretrain.data.indexed import verify_prefix

    if blend is None:
        return None
    prefixes, weights = blend
    if len(prefixes) == 1:
        return prefixes, None
    if weights is None:
        weights = [float(max(verify_prefix(p).num_tokens, 1)) for p in prefixes]
    return prefixes, weights


def _verify_all(blends: list[Blend | None], key: str) -> None:
    from vffn_pretrain.data.indexed import CorruptDatasetError, verify_prefix

    for blend in blends:
        for prefix in blend[0] if blend else []:
            try:
                info = verify_prefix(prefix)
            except CorruptDatasetError as err:
                raise ValueError(f"{key}: {err}") from None
            if info.num_documents == 0 or info.num_tokens == 0:
                raise ValueError(f"{key}: {prefix} is an empty dataset ({info.num_documents} documents, "
                                 f"{info.num_tokens} tokens): re-tokenize its input or leave it out")


def _prepare(cfg: DataConfig, tokenizer, padded_vocab_size: int, seq_length: int, num_samples, materialize: bool,
             seed: int | None = None):
    """Resolve prefixes (tokenizing the bundled corpus when ``materialize``), run the checks, plan the splits
    (``seed``: the data seed, which tells which of the cached indices megatron-core will reuse)."""
    blend, per_split = cfg.blends()
    key = "data.paths" if per_split is None else "data.train_paths"
    blend = _resolve_blend(blend, cfg, tokenizer, materialize)
    per_split = None if per_split is None else [_resolve_blend(b, cfg, tokenizer, materialize) for b in per_split]
    if materialize:
        _verify_all([blend] if per_split is None else per_split, key)
    blend = _explicit_weights(blend)
    per_split = None if per_split is None else [_explicit_weights(b) for b in per_split]
    if not materialize:
        return blend, per_split, None
    prefixes = {p for b in ([blend] if per_split is None else per_split) if b for p in b[0]}
    for prefix in sorted(prefixes):
        # The tokenizer check first: it explains a failing id check.
        if cfg.check_tokenizer:
            checks.check_report_tokenizer(prefix, tokenizer)
        if cfg.check_token_ids:
            checks.check_token_ids(prefix, tokenizer, padded_vocab_size, key=key)
    split = cfg.split if per_split is None else None
    plans = checks.plan_splits([blend] * 3 if per_split is None else per_split, split, num_samples, seq_length,
                               key=key, cached=_cached_indices(cfg, seed, seq_length, split))
    return blend, per_split, plans


def index_cache_dir(cfg: DataConfig) -> Path:
    """Where megatron-core caches the sample indices of this data config."""
    return Path(cfg.cache_dir).expanduser().resolve() / "indices"


def _cached_indices(cfg: DataConfig, seed: int | None, seq_length: int, split: str | None):
    """`cached(prefix, split name, samples)`: whether megatron-core's cache holds the indices of that request, by
    the descriptions it writes next to them (the file names are a hash of the same description). A blend
    component asks megatron-core for a little more than its share (its `mid_level_dataset_surplus`), hence the
    1% of slack on the sample count."""
    import json
    import math

    found = []
    directory = index_cache_dir(cfg)
    for text in sorted(directory.glob("*-GPTDataset-*-description.txt")) if directory.is_dir() else []:
        stem = text.name.removesuffix("-description.txt")
        if not all((directory / f"{stem}-{what}.npy").is_file() for what in
                   ("document_index", "sample_index", "shuffle_index")):
            continue
        try:
            found.append(json.loads(text.read_text()))
        except (OSError, ValueError):
            continue

    def cached(prefix: str, split_name: str, samples: int) -> bool:
        return any(isinstance(d, dict) and d.get("dataset_path") == prefix and d.get("index_split") == split_name
                   and d.get("random_seed") == seed and d.get("sequence_length") == seq_length
                   and d.get("split") == split
                   and isinstance(d.get("num_samples"), int)
                   and samples <= d["num_samples"] <= math.ceil(samples * 1.01) + 1 for d in found)
    return cached


def remove_torn_index_files(cfg: DataConfig) -> list[Path]:
    """Remove the cached sample indices whose `.npy` does not load (a writer killed mid-write), with the
    description megatron-core takes for a cache hit, so that they are built again; returns what was removed.
    Call it holding the cache's writer lock."""
    import numpy as np

    removed = []
    directory = index_cache_dir(cfg)
    for npy in sorted(directory.glob("*.npy")) if directory.is_dir() else []:
        try:
            np.load(npy, mmap_mode="r", allow_pickle=True)
        except (ValueError, OSError, EOFError):
            stem = npy.name.rsplit("-", 1)[0]  # <hash>-<class>-<split>-<what>.npy
            for sibling in [npy, directory / f"{stem}-description.txt"]:
                if sibling.exists():
                    sibling.unlink()
                    removed.append(sibling)
    return removed


def _rank0_first(fn):
    """Run ``fn`` on rank 0 and send its result, or its error, to every rank.

    Rank 0 re-raises its own exception; the others raise a ValueError (RuntimeError) with the same message.
    Without this, an error on rank 0 would leave the other ranks waiting at the next collective forever.
    """
    rank = torch.distributed.get_rank()
    payload: list = [None]
    error: Exception | None = None
    if rank == 0:
        try:
            payload[0] = ("ok", fn())
        except Exception as err:
            error = err
            # Sent as text: exceptions need not pickle.
            payload[0] = ("error", (isinstance(err, RuntimeError), str(err)))
    torch.distributed.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if error is not None:
        raise error
    if status == "error":
        is_runtime, message = value
        raise RuntimeError(message) if is_runtime else ValueError(message)
    return value


def build_datasets(cfg: DataConfig, *, seq_length: int, seed: int, num_samples: tuple[int, int, int], tokenizer,
                   padded_vocab_size: int):
    """Build (train, valid, test) datasets; each item is megatron-core's GPTDataset sample dict
    (``tokens``, ``labels``, ``loss_mask``, ``position_ids``). A split with no source (per-split paths without
    ``valid_paths``, say) is ``None``. Raises ValueError naming ``data.<key>`` when the data does not fit.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("build_datasets must be called inside an initialised torch.distributed process group "
                           "(a 1-rank gloo group is enough)")
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise ValueError(f"num_samples must be three non-negative counts, got {num_samples}")
    num_samples = tuple(int(n) for n in num_samples)
    checks.check_vocab_fits(tokenizer, padded_vocab_size)
    data_seed = cfg.seed if cfg.seed is not None else seed

    def prepare_on_rank0():
        _, _, plans = _prepare(cfg, tokenizer, padded_vocab_size, seq_length, num_samples, materialize=True,
                               seed=data_seed)
        for plan in plans:
            if plan is not None:
                print(plan.describe(seq_length), flush=True)
        return [None if p is None else [c.documents for c in p.components] for p in plans]

    docs_per_split = _rank0_first(prepare_on_rank0)
    blend, per_split, _ = _prepare(cfg, tokenizer, padded_vocab_size, seq_length, num_samples, materialize=False)

    config = GPTDatasetConfig(
        random_seed=data_seed,
        sequence_length=seq_length,
        blend=blend,
        blend_per_split=per_split,
        split=cfg.split if per_split is None else None,
        path_to_cache=str(index_cache_dir(cfg)),
        tokenizer=tokenizer,
        reset_position_ids=cfg.reset_position_ids,
        reset_attention_mask=cfg.reset_attention_mask,
        eod_mask_loss=cfg.eod_mask_loss,
        # The model builds its own causal mask; a seq x seq mask per sample would only cost memory.
        create_attention_mask=False,
        mmap_bin_files=True,
    )
    if per_split is None:
        # A split that has no documents and is asked for no samples is not built (megatron-core would
        # loop forever looking for a non-empty epoch); plan_splits already rejected such splits with samples.
        for i, docs in enumerate(docs_per_split):
            if config.split_matrix[i] is not None and (docs is None or sum(docs) == 0):
                config.split_matrix[i] = None
    sizes = list(num_samples)
    datasets = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return tuple(datasets)
