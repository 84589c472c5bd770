"""The ``vffn-data corpus build`` recipe: packages -> documents -> train/valid/test -> BPE -> indexed datasets.

Layout of ``OUT`` (written in this order; ``manifest.json`` last, so a directory without it is an
interrupted build)::

    text/{train,valid,test}.jsonl        the cleaned documents, {"id": "PKG:path", "text": ...}
    licences/PKG.copyright               each package's copyright file, as shipped
    tokenizer.json (+ .report.json)      byte-level BPE trained on text/train.jsonl
    {train,valid,test}.bin/.idx (+ .report.json)
    manifest.json                        sources (package, version, .deb SHA-256, licence, copyright SHA-256,
                                         files, documents), splits (documents, tokens, SHA-256 of the
                                         documents and of the token files), tokenizer (with its SHA-256), and
                                         the trainer overrides that use the corpus

Deterministic: for the same package versions the documents, the split, the tokenizer and the token files are
the same byte for byte (files are read in sorted path order; a document's split is a hash of its id; exact
duplicate documents are kept once, the first in that order). ``--manifest M`` rebuilds the corpus an earlier
build recorded in M: exactly its package files (version and SHA-256, see ``fetch.Pin``), its split thresholds,
vocabulary size and file limit; at the end the new checksums are compared with M's and the outcome recorded
under ``pinned_by`` (a difference is reported, not fatal: it means a tool version changed the bytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from data_tools.corpus import deb as debfile
from data_tools.corpus.catalogue import get_corpus
from data_tools.corpus.clean import CLEANERS, MIN_CHARS
from data_tools.corpus.fetch import Pin, fetch_package
from vffn_pretrain.data.report import now_iso
from vffn_pretrain.outputs.apart import check_apart, check_replaceable
from vffn_pretrain.outputs.atomic import PARTIAL, sweep_stale_partials, write_json_atomic
from vffn_pretrain.outputs.lock import claim_output

SPLITS = ("train", "valid", "test")


@dataclass
class BuildOptions:
    name: str
    out: str
    cache: str = ".cache/vffn-data/debs"
    deb_dir: str | None = None        # take PKG_*.deb from here instead of apt-get download
    overwrite: bool = False
    vocab_size: int | None = None     # default: the corpus's
    limit_files: int | None = None    # at most this many files per package (a quick slice)
    valid_per_mille: int | None = None  # default: the corpus's
    test_per_mille: int | None = None
    workers: int = 0
    argv: list[str] | None = None
    manifest: str | None = None       # rebuild exactly what this earlier manifest.json recorded


def read_pins(path: str, corpus) -> tuple[dict, dict[str, Pin]]:
    """(the manifest, {package: Pin}) of an earlier build of ``corpus``; ValueError naming the file and the
    problem when it is not such a manifest."""
    try:
        manifest = json.loads(Path(path).read_text())
        sources = {s["package"]: Pin(str(s["version"]), str(s["deb"]), str(s["deb_sha256"]), path)
                   for s in manifest["sources"]}
    except FileNotFoundError:
        raise ValueError(f"--manifest {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--manifest {path}: not a corpus manifest ({type(e).__name__}: {e})") from None
    if manifest.get("corpus") != corpus.name:
        raise ValueError(f"--manifest {path}: is a manifest of corpus {manifest.get('corpus')!r}, not {corpus.name!r}")
    missing = [src.package for src in corpus.sources if src.package not in sources]
    if missing:
        raise ValueError(f"--manifest {path}: pins no version of {', '.join(missing)}")
    return manifest, sources


def compare_with(pinned: dict, manifest: dict) -> list[str]:
    """The checksums of ``manifest`` (this build) that differ from ``pinned`` (the earlier build's)."""
    differ = []
    if pinned.get("tokenizer", {}).get("sha256") != manifest["tokenizer"]["sha256"]:
        differ.append("tokenizer")
    for split, new in manifest["splits"].items():
        old = pinned.get("splits", {}).get(split, {})
        differ += [f"{split}.{key}" for key in ("text_sha256", "bin_sha256", "idx_sha256")
                   if key in old and old[key] != new[key]]
    return differ


def split_of(doc_id: str, valid_per_mille: int, test_per_mille: int) -> str:
    """``valid``, ``test`` or ``train`` from sha256(doc_id) mod 1000, independent of every other document."""
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") % 1000
    if bucket < valid_per_mille:
        return "valid"
    if bucket < valid_per_mille + test_per_mille:
        return "test"
    return "train"


# What a build writes into OUT: anything else there is not a build's, and is never replaced.
BUILD_NAMES = {"text", "licences", "tokenizer.json", "tokenizer.report.json", "manifest.json",
               *(f"{split}{ext}" for split in SPLITS for ext in (".bin", ".idx", ".report.json"))}


def _is_build(out: Path) -> bool:
    """Whether the directory `out` holds only what a build writes (a finished or an interrupted build)."""
    return out.is_dir() and all(p.name in BUILD_NAMES or PARTIAL in p.name for p in out.iterdir())


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, holds anything but a build, or holds a build and overwrite is off."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    check_replaceable(out, ours=_is_build, what="a corpus build", flag="--out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        state = "a finished build" if (out / "manifest.json").exists() else "no manifest.json: an interrupted build?"
        raise FileExistsError(f"--out {out} already exists and is not empty ({state}); "
                              "pass --overwrite to replace it")


@contextlib.contextmanager
def _building_into(out: Path, overwrite: bool, log):
    """Hold OUT's lock while the block builds into OUT. A previous build there (finished, or left half-written by
    a killed run) is moved aside first and removed once the block succeeds; when the block fails (an error,
    Ctrl-C) what it wrote is removed and the previous build comes back. A killed run's leftovers aside are
    removed by the next build."""
    with claim_output(out, "--out", "vffn-data") as lock:
        existed, aside = out.is_dir(), None
        sweep_stale_partials(out, warn=lambda message: log(f"corpus: {message}"))
        if existed and any(out.iterdir()):
            _check_out(out, overwrite)  # again, under the lock
            aside = out.with_name(f"{out.name}{PARTIAL}old-{os.getpid()}")
            os.replace(out, aside)
        try:
            yield lock
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            if aside is not None:
                os.replace(aside, out)
            elif existed:
                out.mkdir()
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _wanted(path: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, g) for g in include) and not any(fnmatch.fnmatch(path, g) for g in exclude)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_build(opts: BuildOptions, log=print) -> dict:
    """Build the corpus; return the manifest. Raises ValueError / FileExistsError (bad input, output exists),
    OutputOverlapsInput (--out over the package cache or --deb-dir), OutputInUse (another build writes --out),
    FetchError (a package could not be fetched) or DebError (a corrupt package) before writing anything."""
    t0 = time.perf_counter()
    corpus = get_corpus(opts.name)
    out = Path(opts.out)
    pinned, pins = read_pins(opts.manifest, corpus) if opts.manifest else ({}, {})
    if pinned:  # the earlier build's settings, unless given again
        per_mille = pinned.get("split_per_mille") or {}
        opts = dataclasses.replace(
            opts, vocab_size=opts.vocab_size or pinned["tokenizer"]["vocab_size"],
            valid_per_mille=opts.valid_per_mille or per_mille.get("valid"),
            test_per_mille=opts.test_per_mille or per_mille.get("test"),
            limit_files=opts.limit_files or pinned.get("limit_files"))
    if opts.vocab_size is not None and opts.vocab_size < 258:
        raise ValueError(f"--vocab-size must be at least 258, got {opts.vocab_size}")
    if opts.limit_files is not None and opts.limit_files < 1:
        raise ValueError(f"--limit-files must be >= 1, got {opts.limit_files}")
    valid_pm = corpus.valid_per_mille if opts.valid_per_mille is None else opts.valid_per_mille
    test_pm = corpus.test_per_mille if opts.test_per_mille is None else opts.test_per_mille
    if not (1 <= valid_pm and 1 <= test_pm and valid_pm + test_pm < 1000):
        raise ValueError(f"--valid-per-mille {valid_pm} and --test-per-mille {test_pm}: each must be >= 1 "
                         "and together below 1000")
    cache, deb_dir = Path(opts.cache), Path(opts.deb_dir) if opts.deb_dir else None
    if deb_dir is not None and not deb_dir.is_dir():
        raise ValueError(f"--deb-dir {deb_dir}: not a directory")
    check_apart({"--out": out}, {"--cache": cache, "--deb-dir": deb_dir})
    _check_out(out, opts.overwrite)
    # Every package is fetched and opened before anything is written.
    debs = {}
    for src in corpus.sources:
        path = fetch_package(src.package, cache, deb_dir, pins.get(src.package))
        control = debfile.read_control(path)
        debs[src.package] = (path, control)
        log(f"corpus: {src.package} {control.get('Version', '?')} ({path.name})")
    with _building_into(out, opts.overwrite, log) as lock:
        return _build(opts, corpus, out, debs, valid_pm, test_pm, pinned, lock, t0, log)


def _build(opts: BuildOptions, corpus, out: Path, debs: dict, valid_pm: int, test_pm: int, pinned: dict, lock,
           t0: float, log) -> dict:
    """Write the corpus into `out` (see the module docstring); return the manifest (compared with `pinned`, the
    --manifest's, when given)."""
    from data_tools.train_tokenizer import TrainTokenizerOptions, run_train_tokenizer
    from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, run_tokenize

    (out / "text").mkdir(parents=True, exist_ok=True)
    (out / "licences").mkdir(exist_ok=True)

    writers = {s: open(out / "text" / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
    seen: set[bytes] = set()
    sources = []
    try:
        for src in corpus.sources:
            path, control = debs[src.package]
            cleaner = CLEANERS[src.cleaner]
            files = []
            copyright_sha = None
            for name, data in sorted(debfile.iter_data_files(path)):
                if name == f"usr/share/doc/{src.package}/copyright":
                    (out / "licences" / f"{src.package}.copyright").write_bytes(data)
                    copyright_sha = hashlib.sha256(data).hexdigest()
                if _wanted(name, src.include, src.exclude):
                    files.append((name, data))
            if opts.limit_files is not None:
                files = files[:opts.limit_files]
            counts = {s: {"documents": 0, "chars": 0} for s in SPLITS}
            dropped = {"short": 0, "duplicate": 0}
            for name, data in files:
                for doc_id, text in cleaner(name, data):
                    if len(text) < MIN_CHARS:
                        dropped["short"] += 1
                        continue
                    digest = hashlib.sha256(text.encode()).digest()
                    if digest in seen:
                        dropped["duplicate"] += 1
                        continue
                    seen.add(digest)
                    full_id = f"{src.package}:{doc_id}"
                    split = split_of(full_id, valid_pm, test_pm)
                    writers[split].write(json.dumps({"id": full_id, "text": text}, ensure_ascii=False) + "\n")
                    counts[split]["documents"] += 1
                    counts[split]["chars"] += len(text)
            if not any(c["documents"] for c in counts.values()):
                raise ValueError(f"package {src.package}: no documents from files matching {list(src.include)}")
            sources.append({
                "package": src.package, "version": control.get("Version"), "deb": path.name,
                "deb_sha256": _sha256(path), "licence": src.licence, "copyright_sha256": copyright_sha,
                "cleaner": src.cleaner, "files": len(files), "dropped": dropped, "splits": counts,
            })
            log(f"corpus: {src.package}: {len(files)} files, "
                f"{sum(c['documents'] for c in counts.values())} documents, "
                f"{sum(c['chars'] for c in counts.values()) / 1e6:.1f}M characters")
    finally:
        for f in writers.values():
            f.close()

    for split in SPLITS:
        if not any(src["splits"][split]["documents"] for src in sources):
            n = sum(c["documents"] for src in sources for c in src["splits"].values())
            raise ValueError(f"split {split!r} got no document out of {n}: too small a corpus or slice for "
                             f"{valid_pm}/1000 valid and {test_pm}/1000 test; raise --valid-per-mille / "
                             "--test-per-mille or --limit-files")
    vocab = opts.vocab_size or corpus.vocab_size
    log(f"corpus: training a byte-level BPE with {vocab} ids on text/train.jsonl")
    tok_report = run_train_tokenizer(TrainTokenizerOptions(
        inputs=[str(out / "text" / "train.jsonl")], output=str(out / "tokenizer.json"), vocab_size=vocab,
        argv=opts.argv))
    splits = {}
    for split in SPLITS:
        log(f"corpus: tokenizing {split}")
        rep = run_tokenize(TokenizeOptions(
            inputs=[str(out / "text" / f"{split}.jsonl")], output_prefix=str(out / split),
            tokenizer=str(out / "tokenizer.json"), workers=opts.workers, argv=opts.argv))
        splits[split] = {"documents": rep["documents"]["written"], "tokens": rep["tokens"],
                         "text_sha256": _sha256(out / "text" / f"{split}.jsonl"),
                         "bin_sha256": rep["output"]["bin_sha256"], "idx_sha256": rep["output"]["idx_sha256"]}
    manifest = {
        "corpus": corpus.name,
        "description": corpus.description,
        "built_at": now_iso(),
        "argv": opts.argv,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "limit_files": opts.limit_files,
        "split_per_mille": {"valid": valid_pm, "test": test_pm},
        "sources": sources,
        "tokenizer": {"path": "tokenizer.json", "vocab_size": tok_report["tokenizer"]["vocab_size"],
                      "sha256": tok_report["tokenizer"]["hash"]},
        "splits": splits,
        "trainer_overrides": [f"data.train_paths=[{(out / 'train').resolve()}]",
                              f"data.valid_paths=[{(out / 'valid').resolve()}]",
                              f"data.test_paths=[{(out / 'test').resolve()}]",
                              f"data.tokenizer={(out / 'tokenizer.json').resolve()}",
                              f"model.vocab_size={vocab}"],
    }
    if pinned:
        differ = compare_with(pinned, manifest)
        manifest["pinned_by"] = {"manifest": opts.manifest, "identical": not differ, "differs": differ}
        log(f"corpus: {'identical to' if not differ else 'differs from'} {opts.manifest}"
            + (f" in {', '.join(differ)} (same packages: a tool version changed the bytes)" if differ else
               " (tokenizer and every split)"))
    lock.verify()
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
