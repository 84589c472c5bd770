"""Cutting a long document into pieces whose token ids, concatenated, equal the ids of the whole document.

A byte-level BPE first splits text with a regular expression (the pre-tokenizer) and then merges bytes only
inside each regex match, so encoding two pieces separately gives the same ids as encoding their concatenation
exactly when the cut falls on a match boundary and the matches before it do not change when the text after it
is removed. ``safe_cuts`` only cuts at two kinds of position ``i``, which are such boundaries for the GPT-2
pattern (the bundled BPE's ``ByteLevel`` pre-tokenizer, tiktoken's r50k/p50k) and tiktoken's cl100k and o200k
patterns:

* ``text[i] == " "`` and ``text[i - 1]`` is not whitespace. No alternative of those patterns matches a
  non-whitespace character followed by a space (a space is only ever the *first* character of a match), and
  none has a positive lookahead, so the matches before ``i`` are the same whether a space or the end of the
  text follows.
* ``text[i - 1] == "\\n"`` with non-whitespace on both sides (``text[i - 2]`` and ``text[i]``). The newline is a
  match on its own (or ends a punctuation match, cl100k/o200k) both in the whole text and at the end of a piece:
  the ``\\s+(?!\\S)`` alternative that would treat a *run* of whitespace differently at the end of the text sees
  a single character here. No alternative matches a newline followed by non-whitespace.

Python's ``str.isspace`` counts every character that the tokenizers' regex engines count as ``\\s`` (and a few
control characters more), so "not whitespace" here implies "not whitespace" there. Nothing is assumed about a
normalizer or a different pre-tokenizer: a tokenizer says whether these cuts are safe for it
(``BaseTokenizer.piecewise_safe``), and ``tests/data/test_pieces.py`` checks random texts encoded whole and in
pieces with each tokenizer that says so.
"""

from __future__ import annotations

import re

# Matches (empty) at every safe cut. Python's \s (for str patterns) is str.isspace.
SAFE_CUT = re.compile(r"(?<=\S)(?= )|(?<=\S\n)(?=\S)")
# How far back from a piece's end a cut is first looked for; widened (doubled) until one is found.
_FIRST_LOOK = 4096


def _last_cut(text: str, lo: int, hi: int) -> int | None:
    """The largest safe cut ``i`` with ``lo < i < hi``, or None."""
    width = _FIRST_LOOK
    while True:
        start = max(lo + 1, hi - width)
        last = None
        for match in SAFE_CUT.finditer(text, start, hi):
            last = match
        if last is not None:
            return last.start()
        if start == lo + 1:
            return None
        width *= 2


def safe_cuts(text: str, max_chars: int) -> list[int] | None:
    """Piece boundaries ``[0, c1, ..., len(text)]`` with every piece at most ``max_chars`` characters long, each
    inner boundary a safe cut (see the module docstring); None when some ``max_chars`` window has no safe cut.
    A text of at most ``max_chars`` characters is one piece."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    cuts = [0]
    while len(text) - cuts[-1] > max_chars:
        cut = _last_cut(text, cuts[-1], cuts[-1] + max_chars + 1)
        if cut is None:
            return None
        cuts.append(cut)
    cuts.append(len(text))
    return cuts
