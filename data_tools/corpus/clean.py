"""Cleaners: one file of a package (bytes) to plain-text documents.

Each cleaner takes ``(path, data)`` and returns a list of ``(doc_id, text)``; ``doc_id`` is unique within the
package and is what the train/valid/test split hashes, so a document's split never depends on the order in
which files are read or on which other files exist.

* ``html``: one document per page; scripts, styles, navigation bars, sidebars, headers and footers are
  dropped, block elements become line breaks, runs of blank lines collapse to one.
* ``pod``: one document per Perl POD file; POD commands (``=head1``) become headings, formatting codes
  (``B<bold>``, ``L<link|target>``) are replaced by their text.
* ``wordnet``: WordNet 3.0 ``data.*`` files; each synset becomes ``word, word: gloss``, and 50 consecutive
  synsets form a document (single glosses are too short to be useful training documents).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser

MIN_CHARS = 200  # shorter documents (empty index pages, stubs) are dropped

_BLOCK = {"p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "pre", "section", "article",
          "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "title", "td", "th"}
_SKIP_TAGS = {"script", "style", "nav", "header", "footer", "head", "noscript", "svg"}
_SKIP_CLASSES = ("sphinxsidebar", "related", "footer", "navheader", "navfooter", "breadcrumbs", "headerlink",
                 "mobile-nav", "toc-mobile", "sidebar")
_VOID = {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_tag: str | None = None  # the tag that opened the skipped region
        self.skip_depth = 0               # nesting of that same tag inside the region

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            if tag in _BLOCK and self.skip_tag is None:
                self.parts.append("\n")
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        classes = dict(attrs).get("class") or ""
        if tag in _SKIP_TAGS or any(c in classes.split() for c in _SKIP_CLASSES) or \
                dict(attrs).get("role") == "navigation":
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.skip_tag is None:
            self.parts.append(data)


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def clean_html(path: str, data: bytes) -> list[tuple[str, str]]:
    parser = _TextExtractor()
    parser.feed(data.decode("utf-8", "replace"))
    parser.close()
    return [(path, _tidy("".join(parser.parts)))]


_POD_CODE = re.compile(r"[BCEFIJLSXZ]<(?:<+\s(.*?)\s>+|([^<>]*))>", re.S)


def _pod_code(m: re.Match) -> str:
    inner = m.group(1) if m.group(1) is not None else m.group(2)
    kind = m.group(0)[0]
    if kind == "L":
        return inner.split("|", 1)[0].split("/", 1)[0] or inner
    if kind == "E":
        return {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}.get(inner, html.unescape(f"&{inner};"))
    if kind in "XZ":
        return ""
    return inner


def clean_pod(path: str, data: bytes) -> list[tuple[str, str]]:
    out = []
    for block in re.split(r"\n\s*\n", data.decode("utf-8", "replace")):
        if block.startswith("="):
            command, _, rest = block.partition(" ")
            if command in ("=head1", "=head2", "=head3", "=head4", "=item"):
                block = rest
            else:
                continue  # =pod, =cut, =over, =back, =begin/=end, =for, =encoding
        for _ in range(3):  # nested codes: B<L<...>>
            block = _POD_CODE.sub(_pod_code, block)
        out.append(block.rstrip())
    return [(path, _tidy("\n\n".join(out)))]


WORDNET_GROUP = 50


def clean_wordnet(path: str, data: bytes) -> list[tuple[str, str]]:
    """WordNet data file lines: ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt ... | gloss``;
    lines starting with two spaces are the licence header."""
    entries = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        fields, gloss = line.split("|", 1)
        parts = fields.split()
        try:
            count = int(parts[3], 16)
        except (IndexError, ValueError):
            continue
        words = [w.replace("_", " ") for w in parts[4:4 + 2 * count:2]]
        words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]
        entries.append(f"{', '.join(words)}: {gloss.strip()}")
    return [(f"{path}#{i // WORDNET_GROUP}", "\n".join(entries[i:i + WORDNET_GROUP]))
            for i in range(0, len(entries), WORDNET_GROUP)]


CLEANERS: dict[str, Callable[[str, bytes], list[tuple[str, str]]]] = {
    "html": clean_html,
    "pod": clean_pod,
    "wordnet": clean_wordnet,
}
