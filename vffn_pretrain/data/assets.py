"""The corpus and tokenizer shipped inside the repository, so that training runs with no download.

The corpus is the Jargon File 4.4.7 (public domain), the gzip file of Debian's ``jargon-text`` package byte for
byte; the tokenizer is a byte-level BPE with 8192 ids trained on it with ``vffn-data train-tokenizer``. Both are
described, with checksums and the commands that made them, in ``assets/SOURCE.md``.

Facts only (paths and names): the tokenizer, the tokenizing pipeline and the cache of the tokenized corpus
(``bundled``) all build on this module, so it imports nothing of the package.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_CORPUS = ASSETS / "jargon-4.4.7.txt.gz"
BUNDLED_TOKENIZER = ASSETS / "jargon-bpe-8192.json"
# The corpus is one text file whose blank-line-separated blocks (entries, paragraphs) are the documents.
BUNDLED_SPLIT_ON_BLANK_LINES = True
BUNDLED_NAME = "jargon"
