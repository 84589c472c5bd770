"""The bundled corpus (``assets``) tokenized once into a cache directory, so that training runs with no download.

``ensure_bundled_prefix`` tokenizes the corpus once into a cache directory and returns the prefix; later calls
(and other processes) reuse the cached ``.bin/.idx``. The cache key holds the corpus and tokenizer hashes, so a
different tokenizer gets its own tokenization.
"""

from __future__ import annotations

import time
from pathlib import Path

from vffn_pretrain.data import assets
from vffn_pretrain.data.hashing import sha256_file
from vffn_pretrain.data.prefix import bin_path, idx_path


def bundled_cache_prefix(cache_dir: str | Path, tokenizer) -> Path:
    """Where the bundled corpus tokenized with ``tokenizer`` lives (or will live) under ``cache_dir``."""
    key = f"{sha256_file(assets.BUNDLED_CORPUS)[:12]}-{tokenizer.hash[:12]}"
    return Path(cache_dir).expanduser().resolve() / "bundled" / key / assets.BUNDLED_NAME


def ensure_bundled_prefix(cache_dir: str | Path, tokenizer, *, workers: int = 0, progress: bool = False) -> Path:
    """Return the prefix of the bundled corpus tokenized with ``tokenizer``, tokenizing it if not cached.

    Safe against concurrent callers: one of them tokenizes (it holds the prefix's lock, ``outputs.lock``) and
    the others wait for its complete prefix. Not collective: in a distributed job call it on one rank, then
    barrier (``vffn_pretrain.data.builder`` does).
    """
    # Imported here: the tokenize pipeline (workers, megatron's writer) is needed only when the cache is cold.
    from vffn_pretrain.data.indexed import verify_prefix
    from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize
    from vffn_pretrain.outputs.lock import OutputInUse

    prefix = bundled_cache_prefix(cache_dir, tokenizer)
    while True:
        if Path(idx_path(prefix)).exists() and Path(bin_path(prefix)).exists():
            verify_prefix(prefix)  # a damaged cache is an error, not something to silently reuse
            return prefix
        try:
            run_tokenize(
                TokenizeOptions(
                    inputs=[str(assets.BUNDLED_CORPUS)],
                    output_prefix=str(prefix),
                    tokenizer=tokenizer.spec,
                    workers=workers,
                    split_on_blank_lines=assets.BUNDLED_SPLIT_ON_BLANK_LINES,
                    overwrite=True,  # only reached when the prefix is absent or incomplete
                    progress=progress,
                )
            )
            return prefix
        except OutputInUse:
            time.sleep(0.5)  # another process is tokenizing it: wait for its prefix
