"""Start-up checks on the data, run before any dataset index is built.

* the tokenizer fits the model: ``tokenizer.vocab_size <= padded_vocab_size``;
* each prefix is structurally sound (``indexed.verify_prefix``) and not empty;
* a sample of token ids (spread over the whole file, first and last sequence included) is below the model's
  padded vocab and the tokenizer's vocab: a mismatch means the data was made with another tokenizer, or the
  file is damaged;
* the report next to a prefix, when there is one, names the same tokenizer: another one (a different
  end-of-document id, so wrong document boundaries) is an error naming ``data.tokenizer`` and the prefix;
* every split that must deliver samples has documents, and the number of epochs each requested sample count
  implies is computed (``plan_splits``), so that it can be printed.

Errors are ``ValueError`` naming the config key to fix (``data.tokenizer``, ``data.paths``, ``data.split``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vffn_pretrain.data.indexed import CorruptDatasetError, open_indexed_dataset
from vffn_pretrain.data.prefix import report_path
from vffn_pretrain.data.report import read_report

SPLIT_NAMES = ("train", "valid", "test")


def check_vocab_fits(tokenizer, padded_vocab_size: int) -> None:
    if tokenizer.vocab_size > padded_vocab_size:
        raise ValueError(
            f"data.tokenizer: {tokenizer.name} has {tokenizer.vocab_size} ids but the model's padded vocab size "
            f"is {padded_vocab_size}; use a larger model vocab or a smaller tokenizer"
        )


def sample_positions(n: int, max_samples: int) -> np.ndarray:
    """Up to ``max_samples`` indices spread evenly over ``range(n)``, first and last included."""
    if n <= max_samples:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_samples).round().astype(np.int64))


def check_token_ids(prefix: str, tokenizer, padded_vocab_size: int, *, key: str = "data.paths",
                    max_sequences: int = 256, max_tokens_per_sequence: int = 4096) -> int:
    """Sampled check that the ids in ``prefix`` fit the tokenizer and the model. Returns the largest id seen."""
    try:
        ds = open_indexed_dataset(prefix)
    except CorruptDatasetError as err:
        raise ValueError(f"{key}: {err}") from None
    n = len(ds)
    if n == 0:
        raise ValueError(f"{key}: {prefix} holds no documents")
    largest = -1
    for i in sample_positions(n, max_sequences):
        length = int(ds.sequence_lengths[i])
        if length == 0:
            continue
        ids = ds.get(int(i), offset=0, length=min(length, max_tokens_per_sequence))
        top = int(ids.max())
        if top > largest:
            largest = top
        if top >= padded_vocab_size:
            raise ValueError(
                f"{key}: {prefix}.bin: token id {top} in sequence {int(i)} is not below the model's padded vocab "
                f"size {padded_vocab_size}: the data was tokenized with a larger tokenizer, or the file is damaged"
            )
        if top >= tokenizer.vocab_size:
            raise ValueError(
                f"data.tokenizer: {prefix}.bin holds token id {top} (sequence {int(i)}) but {tokenizer.name} has "
                f"only {tokenizer.vocab_size} ids: the data was made with another tokenizer"
            )
    return largest


def check_report_tokenizer(prefix: str, tokenizer) -> None:
    """Raise ValueError naming data.tokenizer if the prefix's report names a different tokenizer."""
    report = read_report(report_path(prefix)) or {}
    made_with = report.get("tokenizer") or {}
    if made_with.get("hash") and made_with["hash"] != tokenizer.hash:
        eod = (f"; its end-of-document id is {made_with.get('eod')}, {tokenizer.name}'s is {tokenizer.eod}"
               if made_with.get("eod") is not None and made_with.get("eod") != tokenizer.eod else "")
        raise ValueError(
            f"data.tokenizer: {prefix} was tokenized with {made_with.get('name')} (sha256 "
            f"{made_with['hash'][:12]}), but data.tokenizer is {tokenizer.name} (sha256 {tokenizer.hash[:12]})"
            f"{eod}; set data.tokenizer to {made_with.get('spec') or made_with.get('name')!r}, re-tokenize, or set "
            "data.check_tokenizer=false if the ids are meant for both")


def split_document_ranges(num_documents: int, split: str | None) -> list[tuple[int, int] | None]:
    """The [begin, end) documents of each split, exactly as megatron-core's dataset builder computes them."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    if split is None:  # per-split paths: each prefix is wholly its split
        return [(0, num_documents)] * 3
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [None if m is None else (int(round(m[0] * num_documents)), int(round(m[1] * num_documents)))
            for m in matrix]


@dataclass
class Component:
    prefix: str
    weight: float
    documents: int
    tokens: int
    samples: int
    epochs: float


@dataclass
class SplitPlan:
    name: str
    samples: int
    components: list[Component]

    def describe(self, seq_length: int) -> str:
        head = f"[data] {self.name}: {self.samples:,} samples x {seq_length} tokens"
        parts = []
        for c in self.components:
            repeat = " (repeats the data)" if c.epochs > 1 else ""
            parts.append(f"{c.prefix} (weight {c.weight:.3f}): {c.documents:,} documents, {c.tokens:,} tokens -> "
                         f"{c.epochs:.3f} epochs{repeat}")
        return head + "; " + "; ".join(parts)


# The keys whose values set each split's sample count (the trainer asks max_steps x global batch training
# samples and eval_iters x global batch validation samples).
SAMPLES_KEY = {"train": "train.max_steps", "valid": "train.eval_iters", "test": "train.eval_iters"}


@dataclass(frozen=True)
class IndexMemory:
    """About the memory megatron-core's GPTDataset needs for one split of one prefix when it builds the indices
    (rank 0, on a cache miss): `peak` while it builds them, `resident` for as long as the run lasts (the arrays
    stay in memory on the rank that built them; cached ones are memory-mapped, and cost nothing here)."""
    peak: int
    resident: int


def index_memory(epochs: float, documents: int, tokens: int, samples: int, seq_length: int) -> IndexMemory:
    """megatron-core builds its indices over whole epochs: the document index (int32, a document per epoch, made
    from an int64 (2, epochs, documents) grid and a copy of it), then a sample index row (two int32, or int64) and a
    shuffle entry (uint32, or int64) per sample of those epochs, which may be far more samples than asked for (a tiny
    validation request over a large corpus still indexes its whole epoch)."""
    full_epochs = max(1, math.ceil(epochs))
    built_samples = max(samples, full_epochs * tokens // seq_length)
    resident = 4 * full_epochs * documents + 16 * (built_samples + 1)  # int64 rows past 2**31 tokens
    return IndexMemory(peak=resident + 24 * full_epochs * documents, resident=resident)


def blend_index_bytes(samples: int, components: int) -> int:
    """The BlendedDataset's own indices (an int16 dataset id and an int64 sample id per sample), resident."""
    return 10 * samples if components > 1 else 0


def memory_limit(cgroup_of_process: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                 physical: int | None = None) -> int:
    """The memory this process may use at most: the machine's physical memory, or its control group's limit
    when that is lower (SLURM's --mem, a container's -m), which kills a process that goes over it."""
    import psutil

    limits = [int(psutil.virtual_memory().total) if physical is None else physical]
    try:
        lines = cgroup_of_process.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: this group and every group above it
            files = [cgroup_root.joinpath(*Path(path).parts[1:i], "memory.max") for i in
                     range(len(Path(path).parts), 0, -1)]
        elif "memory" in controllers.split(","):  # cgroup v1
            files = [cgroup_root.joinpath("memory", *Path(path).parts[1:], "memory.limit_in_bytes")]
        else:
            continue
        for f in files:
            try:
                text = f.read_text().strip()
            except OSError:
                continue
            if text.isdigit():
                limits.append(int(text))
    return min(limits)


def plan_splits(blends: list[tuple[list[str], list[float] | None] | None], split: str | None,
                num_samples: tuple[int, int, int], seq_length: int, *, key: str,
                memory: int | None = None,
                cached: Callable[[str, str, int], bool] | None = None) -> list[SplitPlan | None]:
    """Per split, the documents and tokens each prefix contributes and the epochs the request implies.

    ``blends[i]`` is the blend of split i (the same blend thrice for ``paths`` + ``split``). Raises ValueError
    when a split must deliver samples but has no tokens (megatron-core would loop forever on it), and when the
    indices megatron-core would build for a request exceed ``memory`` bytes (default: ``memory_limit()``, what
    this process may use at most), naming the key that sets the request (``train.max_steps``,
    ``train.eval_iters``). The indices of all splits and components are counted together, as they stay in
    memory together; those `cached(prefix, split name, samples)` says megatron-core will find in its cache are
    memory-mapped and not counted.
    """
    from vffn_pretrain.data.indexed import verify_prefix

    infos: dict[str, tuple[np.ndarray, int]] = {}
    plans: list[SplitPlan | None] = []
    resident: dict[str, int] = {}  # per split: the memory its built indices keep
    transient = 0  # the most any one component needs above what it keeps, while it is built
    for i, name in enumerate(SPLIT_NAMES):
        blend = blends[i]
        if blend is None:
            plans.append(None)
            continue
        prefixes, weights = blend
        weights = weights or [1.0] * len(prefixes)
        total_w = sum(weights)
        components = []
        built_here = False  # some component of this split misses the cache: its blend indices are built too
        for prefix, w in zip(prefixes, weights):
            if prefix not in infos:
                info = verify_prefix(prefix)
                ds = open_indexed_dataset(prefix)
                infos[prefix] = (np.asarray(ds.sequence_lengths), info.num_sequences)
            lengths, n = infos[prefix]
            rng = split_document_ranges(n, split)[i]
            if rng is None:
                continue
            docs = rng[1] - rng[0]
            tokens = int(lengths[rng[0]:rng[1]].sum(dtype=np.int64))
            samples = math.ceil(num_samples[i] * w / total_w)
            if samples > 0 and tokens == 0:
                where = f"the {name} split ({split}) of " if split else ""
                raise ValueError(f"{key if not split else 'data.split'}: {where}{prefix} has no tokens "
                                 f"({docs} documents) but {num_samples[i]} {name} samples are requested")
            epochs = (samples * seq_length + 1) / tokens if tokens else 0.0
            memory = memory_limit() if memory is None else memory
            hit = cached is not None and cached(prefix, name, samples)
            built_here = built_here or not hit
            need = IndexMemory(0, 0) if hit else index_memory(epochs, docs, tokens, samples, seq_length)
            resident[name] = resident.get(name, 0) + need.resident
            transient = max(transient, need.peak - need.resident)
            if need.peak > memory:
                raise ValueError(f"{SAMPLES_KEY[name]}: {num_samples[i]:,} {name} samples of {seq_length} tokens are "
                                 f"{epochs:.3g} epochs of {prefix} ({docs:,} documents, {tokens:,} tokens); the "
                                 f"indices megatron-core builds for them need about {_size(need.peak)}, more than "
                                 f"the {_size(memory)} of memory this process may use; ask for fewer samples, or "
                                 f"run where more memory is available")
            components.append(Component(prefix, w / total_w, docs, tokens, samples, epochs))
        plans.append(SplitPlan(name, num_samples[i], components) if components else None)
        if built_here:
            resident[name] = resident.get(name, 0) + blend_index_bytes(num_samples[i], len(components))
    total = sum(resident.values()) + transient
    if memory is not None and total > memory:  # each component fits, all of them together do not
        largest = max(resident, key=resident.get)
        shares = ", ".join(f"{n} {_size(b)}" for n, b in resident.items())
        raise ValueError(f"{SAMPLES_KEY[largest]}: the indices megatron-core builds for every split and blend "
                         f"component together need about {_size(total)} ({shares}, plus {_size(transient)} while "
                         f"one is built), more than the {_size(memory)} of memory this process may use; ask for "
                         f"fewer samples, or run where more memory is available")
    return plans


def _size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
