"""``DataConfig``: the ``data`` group of the training config (``conf/data/default.yaml``).

Where the tokens come from:

* ``paths``: one prefix (``/data/web`` for ``/data/web.bin`` + ``.idx``), a list of prefixes (blended in
  proportion to their sizes), or a blend ``[w1, prefix1, w2, prefix2, ...]``; split into train/valid/test by
  ``split`` (``"969,30,1"``: proportions of the documents, in file order). ``null`` (the default), or the
  word ``bundled`` inside a list, means the corpus shipped with the repo, tokenized on first use into
  ``cache_dir``.
* or ``train_paths``/``valid_paths``/``test_paths``: a prefix or blend per split (``split`` is then unused and
  ``paths`` must be ``null``). ``valid_paths``/``test_paths`` may be left out.

``tokenizer``: ``null`` (the bundled BPE), a ``tokenizer.json``, a tiktoken file, or ``null:N``
(see ``vffn_pretrain.data.tokenizer``). ``cache_dir`` holds megatron-core's sample-index cache and the
tokenized bundled corpus; a relative path is relative to the working directory (``.cache/vffn-data``, ignored
by git). ``seed`` overrides the training seed for the sample order (``null``: use the training seed).

``DataConfig.from_dict`` validates everything and raises ``ValueError`` naming the key as ``data.<key>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.config.fields import DATA, MAX_SEED, build_group, check_fields, setting
from vffn_pretrain.data.prefix import strip_file_suffix

BUNDLED = "bundled"
MAX_WORKERS = 512  # worker processes per rank (data loading, tokenizing the bundled corpus)

Blend = tuple[list[str], list[float] | None]


@dataclass
class DataConfig:
    paths: list | str | None = setting(None, changes=DATA)
    train_paths: list | str | None = setting(None, changes=DATA)
    valid_paths: list | str | None = setting(None, changes=DATA)
    test_paths: list | str | None = setting(None, changes=DATA)
    split: str = setting("969,30,1", changes=DATA)
    tokenizer: str | None = setting(None, changes=DATA)
    cache_dir: str = ".cache/vffn-data"
    num_workers: int = setting(0, ge=0, le=MAX_WORKERS)
    check_token_ids: bool = True
    # Refuse data whose report names another tokenizer than data.tokenizer (false: trust the ids as they are).
    check_tokenizer: bool = True
    seed: int | None = setting(None, ge=0, le=MAX_SEED, changes=DATA)
    # Passed to megatron-core's GPTDatasetConfig (see its documentation).
    reset_position_ids: bool = setting(False, changes=DATA)
    reset_attention_mask: bool = setting(False, changes=DATA)
    eod_mask_loss: bool = setting(False, changes=DATA)
    # Documents of the bundled corpus are tokenized with this many worker processes on first use.
    bundled_tokenize_workers: int = setting(0, ge=0, le=MAX_WORKERS)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> DataConfig:
        """Build and validate from a mapping (a plain dict or an OmegaConf DictConfig)."""
        d = _to_plain(d or {})
        if not isinstance(d, Mapping):
            raise ValueError(f"data: expected a mapping, got {type(d).__name__}")
        try:
            cfg = build_group(cls, "data", dict(d))
        except ConfigError as e:  # this module's errors are ValueError("data.<key>: ...")
            raise ValueError(f"{e.key}: {e.reason}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError("data.<key>: ...")`` for the first bad value."""
        try:
            check_fields(self, "data")
        except ConfigError as e:
            raise ValueError(f"{e.key}: {e.reason}") from None
        for name in ("paths", "train_paths", "valid_paths", "test_paths"):
            value = getattr(self, name)
            if value is not None:
                parse_blend(value, f"data.{name}")
        per_split = any(getattr(self, n) is not None for n in ("train_paths", "valid_paths", "test_paths"))
        if per_split:
            if self.paths is not None:
                raise ValueError("data.paths: cannot be combined with data.train_paths/valid_paths/test_paths; "
                                 "set data.paths to null for per-split paths")
            if self.train_paths is None:
                raise ValueError("data.train_paths: required when valid_paths/test_paths are given")
        parse_split(self.split)
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str) or not self.tokenizer.strip()):
            raise ValueError(f"data.tokenizer: expected null or a tokenizer path/spec, got {self.tokenizer!r}")
        if not isinstance(self.cache_dir, str) or not self.cache_dir.strip():
            raise ValueError(f"data.cache_dir: expected a directory path, got {self.cache_dir!r}")

    def blends(self) -> tuple[Blend | None, list[Blend | None] | None]:
        """(blend, None) for ``paths`` + ``split``, or (None, [train, valid, test]) for per-split paths.
        ``paths: null`` gives the bundled corpus as a one-prefix blend."""
        per_split = [self.train_paths, self.valid_paths, self.test_paths]
        if any(p is not None for p in per_split):
            return None, [None if p is None else parse_blend(p, f"data.{n}_paths")
                          for p, n in zip(per_split, ("train", "valid", "test"))]
        return parse_blend(self.paths if self.paths is not None else BUNDLED, "data.paths"), None


def _to_plain(obj: Any) -> Any:
    """OmegaConf containers to plain dicts/lists (without importing omegaconf when not in use)."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    return obj


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _clean_prefix(p: str, key: str) -> str:
    if not isinstance(p, str) or not p.strip():
        raise ValueError(f"{key}: expected a dataset prefix (path without .bin/.idx), got {p!r}")
    return strip_file_suffix(p.strip())


def parse_blend(value: Any, key: str = "data.paths") -> Blend:
    """A prefix, a list of prefixes, or ``[w1, p1, w2, p2, ...]`` -> (prefixes, weights or None).

    Weights must be positive numbers (strings of numbers are accepted, as on megatron's command line).
    """
    value = _to_plain(value)
    if isinstance(value, str):
        return [_clean_prefix(value, key)], None
    if not isinstance(value, Sequence) or isinstance(value, bytes) or len(value) == 0:
        raise ValueError(f"{key}: expected a prefix, a list of prefixes or [weight, prefix, ...], got {value!r}")
    items = list(value)
    numbers = [_number(v) for v in items]
    if all(n is None for n in numbers):
        return [_clean_prefix(p, key) for p in items], None
    if len(items) % 2 or any(n is None for n in numbers[0::2]) or any(n is not None for n in numbers[1::2]):
        raise ValueError(f"{key}: a weighted blend alternates weight and prefix: [w1, prefix1, w2, prefix2, ...]; "
                         f"got {items!r}")
    weights = [float(n) for n in numbers[0::2]]
    if any(not w > 0 for w in weights) or any(w != w or w == float("inf") for w in weights):
        raise ValueError(f"{key}: blend weights must be positive finite numbers, got {weights}")
    return [_clean_prefix(p, key) for p in items[1::2]], weights


def parse_split(split: Any) -> list[float]:
    """``"969,30,1"`` -> [969.0, 30.0, 1.0] (up to three non-negative numbers, not all zero)."""
    if not isinstance(split, str):
        raise ValueError(f"data.split: expected a string like \"969,30,1\", got {split!r}")
    parts = [s.strip() for s in re.split(r"[,/]", split)]
    try:
        values = [float(s) for s in parts]
    except ValueError:
        raise ValueError(f"data.split: expected comma-separated numbers like \"969,30,1\", got {split!r}") from None
    if not 1 <= len(values) <= 3 or any(v < 0 or v != v or v == float("inf") for v in values):
        raise ValueError(f"data.split: expected 1 to 3 finite non-negative numbers, got {split!r}")
    if not values[0] > 0:
        raise ValueError(f"data.split: the training part (the first number) must be > 0, got {split!r}")
    return values + [0.0] * (3 - len(values))
