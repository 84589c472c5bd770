"""The named corpora of ``vffn-data corpus build``: Debian packages of English prose, each with its licence.

Only public-domain and permissively licensed packages are used (the licence named here is the one in the
package's ``/usr/share/doc/PKG/copyright``, which the build copies into the manifest by checksum). A corpus
is a list of :class:`Source`: a package, the globs (inside the package) of the files to read, and the
cleaner that turns each file into documents (see :mod:`data_tools.corpus.clean`).

Sizes (Debian 12, with the corpus's own 8192-id BPE) are in docs/study.md: ``debian-docs-en`` is about
100M characters, 20M+ tokens of technical English prose (manuals, guides, tutorials; code examples
included) plus WordNet's glosses. Perl's documentation is under "Artistic or GPL": the Artistic licence is
the one relied on here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    package: str
    licence: str          # SPDX-style name of the licence the package's copyright file states
    include: tuple[str, ...]  # fnmatch globs over the paths inside the package (no leading "./")
    cleaner: str          # a name in data_tools.corpus.clean.CLEANERS
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    sources: tuple[Source, ...]
    vocab_size: int = 8192
    # Documents go to valid / test when sha256(document id) mod 1000 falls below these thresholds.
    valid_per_mille: int = 10
    test_per_mille: int = 5


_SPHINX_SKIP = ("*/genindex*.html", "*/search.html", "*/py-modindex.html", "*/_static/*", "*/_sources/*",
                "*/_images/*", "*/_modules/*")

CORPORA: dict[str, Corpus] = {
    c.name: c for c in (
        Corpus(
            name="debian-docs-en",
            description="English reference manuals, guides and tutorials from Debian packages (Python, "
                        "Django, PostgreSQL, SQLite, Perl, Erlang, pandas, LLVM, Rust, Apache httpd) plus "
                        "WordNet 3.0's glosses; public domain or permissive licences",
            sources=(
                Source("python3.11-doc", "PSF-2.0", ("usr/share/doc/python3.11/html/*.html",),
                       "html", _SPHINX_SKIP),
                Source("python-django-doc", "BSD-3-Clause", ("usr/share/doc/python-django-doc/html/*.html",),
                       "html", _SPHINX_SKIP),
                Source("postgresql-doc-15", "PostgreSQL", ("usr/share/doc/postgresql-doc-15/html/*.html",),
                       "html", ("*/bookindex.html",)),
                Source("sqlite3-doc", "public-domain", ("usr/share/doc/sqlite3/*.html",), "html"),
                Source("perl-doc", "Artistic-1.0 OR GPL-1.0-or-later", ("usr/share/perl/*/pod/*.pod",), "pod"),
                Source("wordnet-base", "WordNet-3.0 (BSD-like)", ("usr/share/wordnet/data.*",), "wordnet"),
                Source("erlang-doc", "Apache-2.0", ("usr/share/doc/erlang-doc/*.html",), "html"),
                Source("python-pandas-doc", "BSD-3-Clause", ("usr/share/doc/python-pandas-doc/html/*.html",),
                       "html", _SPHINX_SKIP),
                Source("llvm-15-doc", "Apache-2.0 WITH LLVM-exception", ("usr/share/doc/llvm-15-doc/html/*.html",),
                       "html", _SPHINX_SKIP),
                # The Rust books (hand-written), not the generated API pages (core, std, alloc, src, ...);
                # mdBook's print.html repeats every chapter of a book.
                Source("rust-doc", "MIT OR Apache-2.0",
                       tuple(f"usr/share/doc/rust-doc/html/{book}/*.html" for book in (
                           "book", "reference", "nomicon", "edition-guide", "embedded-book", "rust-by-example",
                           "rustc", "rustdoc", "unstable-book")),
                       "html", ("*/print.html", "*/toc.html")),
                Source("apache2-doc", "Apache-2.0", ("usr/share/doc/apache2-doc/manual/en/*.html",), "html"),
            ),
        ),
    )
}


def get_corpus(name: str) -> Corpus:
    """The corpus called ``name``; a ValueError naming the known ones otherwise."""
    try:
        return CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}") from None
