"""``vffn-data tokenize``: input files to one megatron-core indexed dataset, in parallel and in bounded memory.

The main process reads the inputs as chunks of whole records (``readers``), hands them to a pool of worker
processes (``worker.process_chunk``: decode, validate, tokenize, append EOS), and writes the results strictly in
input order through ``AtomicIndexedWriter``. At most ``window`` chunks are in flight, so memory does not grow
with the input. Because the chunking is fixed by the input and results are written in order, the output is
byte-identical for any number of workers (``--workers 0`` runs everything in the main process).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from vffn_pretrain.data.prefix import check_output, prefix_files, report_path, smallest_dtype
from vffn_pretrain.data.report import SkipLog, base_report, now_iso
from vffn_pretrain.data.tokenizing import readers
from vffn_pretrain.data.tokenizing.worker import (
    DEFAULT_MAX_DOC_MB,
    DOCUMENT_TOO_LONG,
    PIECE_CHARS,
    ChunkResult,
    WorkerConfig,
    init_worker,
    process_chunk,
    set_state,
)
from vffn_pretrain.outputs.atomic import write_json_atomic


class StrictModeError(ValueError):
    """A bad record was met with ``--strict``."""


class EmptyOutputError(ValueError):
    """No document survived: an empty input, or every record skipped. Nothing is written."""


@dataclass
class TokenizeOptions:
    inputs: list[str]
    output_prefix: str
    tokenizer: str | None = None
    workers: int = 0
    text_key: str = "text"
    split_on_blank_lines: bool = False
    format: str = "auto"
    overwrite: bool = False
    strict: bool = False
    chunk_bytes: int = readers.DEFAULT_CHUNK_BYTES
    # Documents that cannot be encoded in pieces are encoded whole up to this size, skipped above it.
    max_doc_mb: float = DEFAULT_MAX_DOC_MB
    progress: bool = False
    argv: list[str] | None = None
    # Test hook: called with each result before it is written (lets tests interrupt a run mid-way).
    on_result: Callable[[ChunkResult], None] | None = None


def _mp_context():
    """fork where available: workers start in milliseconds and, unlike spawn and forkserver, do not re-import
    the caller's ``__main__`` (which breaks for stdin or notebooks, and re-runs unguarded scripts such as a
    training entry point that tokenizes the bundled corpus). The workers only tokenize: they never touch the
    torch, gloo or tokenizer-thread state they inherit, and rebuild their tokenizer from its spec."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def default_workers() -> int:
    return max(1, min(usable_cpus(), 16))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Compressed inputs hold more text than their size: a rough expansion ratio, to estimate their chunks.
_COMPRESSION_RATIO = 4


def useful_workers(requested: int, files: list, chunk_bytes: int) -> tuple[int, str | None]:
    """``requested`` capped at what can help: the CPUs and (an estimate of) the input's chunks. Returns the
    number and, when it was capped, a line saying why."""
    if requested <= 1:
        return requested, None
    expanded = sum(f.size * (_COMPRESSION_RATIO if f.compression else 1) for f in files)
    chunks = max(1, -(-expanded // max(chunk_bytes, 1)))
    cap = max(1, min(usable_cpus(), chunks))
    if requested <= cap:
        return requested, None
    return cap, (f"--workers {requested} capped at {cap}: {usable_cpus()} usable CPUs, about {chunks} input "
                 f"chunk(s) of {chunk_bytes / (1 << 20):g} MB; more workers would only compete for them")


def _ordered_parallel_map(fn, items: Iterable, executor: ProcessPoolExecutor, window: int) -> Iterator:
    """``map`` over a process pool, yielding results in input order with at most ``window`` tasks pending
    (``Executor.map`` and ``Pool.imap`` would read the whole input ahead)."""
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Progress:
    """A tqdm bar over on-disk input bytes, with documents, tokens and throughput in the postfix."""

    def __init__(self, total_bytes: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenize",
                            dynamic_ncols=True)
        self.last = 0.0

    def update(self, result: ChunkResult, docs: int, tokens: int, text_bytes: int, t0: float) -> None:
        if self.bar is None:
            return
        self.bar.update(result.progress_bytes)
        now = time.perf_counter()
        if now - self.last > 0.5:
            self.last = now
            rate = text_bytes / max(now - t0, 1e-9) / 1e6
            self.bar.set_postfix(docs=f"{docs:,}", tokens=f"{tokens:,}", text=f"{rate:.1f}MB/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _noop() -> None:
    return None


def _start_pool(workers: int, tokenizer_spec: str, config: WorkerConfig) -> ProcessPoolExecutor:
    """Start ``workers`` tokenize processes now, and wait until each has built its tokenizer.

    With fork, ProcessPoolExecutor forks every worker at the first submit. Freezing the garbage collector
    around the fork keeps the workers' collections away from the objects they inherit: otherwise the first
    full collection in each worker writes to every inherited object and so copies the parent's pages
    (copy-on-write), and each worker's private memory jumps from about 45 MB to the parent's heap (measured:
    about 150 MB with megatron-core imported).
    """
    executor = ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=init_worker,
                                   initargs=(tokenizer_spec, config))
    gc.freeze()
    try:
        ready = executor.submit(_noop)
    finally:
        gc.unfreeze()
    ready.result()  # a worker that cannot start (bad tokenizer) fails here, before any output exists
    return executor


def _nothing_to_write(files, per_file: dict, skips: SkipLog, text_key: str) -> str:
    """The one line for an input that yields no document."""
    names = ", ".join(f.path for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    read = sum(s["documents_read"] for s in per_file.values())
    if read == 0:
        return f"no documents in {names}: the input is empty; nothing was written"
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skips.by_reason.items()))
    hint = f" (is --text-key {text_key!r} the right field?)" if "missing_field" in skips.by_reason else ""
    return f"all {read} records of {names} were skipped ({reasons}){hint}; nothing was written"


def run_tokenize(opts: TokenizeOptions) -> dict:
    """Tokenize ``opts.inputs`` into ``opts.output_prefix``; return the report (also written next to it).

    Raises ``readers.InputError`` (bad input file), ``prefix.OutputExistsError`` (prefix exists, no overwrite),
    ``OutputOverlapsInput`` (the prefix's files would overwrite an input or the tokenizer), ``OutputInUse``
    (another process writes the prefix), ``StrictModeError`` (bad record with ``strict``), ``EmptyOutputError``
    (no document survived) or ``ValueError`` (bad tokenizer), leaving no output.
    """
    from vffn_pretrain.data.tokenizer import build_tokenizer
    from vffn_pretrain.data.tokenizing.writer import AtomicIndexedWriter
    from vffn_pretrain.outputs.apart import check_apart
    from vffn_pretrain.outputs.lock import claim_output

    t_start = time.perf_counter()
    report = base_report("tokenize", opts.argv)
    # Every error that needs no work comes before any output or worker exists.
    files = readers.resolve_inputs(opts.inputs, opts.format)
    tokenizer = build_tokenizer(opts.tokenizer)
    # An output that is one of the inputs is said so first (check_output would call it a foreign file).
    check_apart({"--output-prefix": prefix_files(opts.output_prefix)},
                {"--input": [f.path for f in files], "the tokenizer": getattr(tokenizer, "path", None)})
    check_output(opts.output_prefix, opts.overwrite)
    workers, why = useful_workers(opts.workers, files, opts.chunk_bytes)
    if why:
        print(f"vffn-data: {why}", file=sys.stderr)
    dtype = smallest_dtype(tokenizer.vocab_size)
    max_doc_bytes = int(opts.max_doc_mb * 1e6)
    # A document of at most piece_chars characters is encoded whole; at 4 UTF-8 bytes a character at most, it
    # stays within the limit.
    config = WorkerConfig(text_key=opts.text_key, dtype=dtype.__name__, max_doc_bytes=max_doc_bytes,
                          piece_chars=max(1, min(PIECE_CHARS, max_doc_bytes // 4)))
    skips = SkipLog()
    per_file: dict[str, dict] = {
        f.path: {"documents_read": 0, "documents_written": 0, "skipped": 0, "blank_lines_ignored": 0} for f in files
    }
    docs_written = tokens = text_bytes = 0
    lock = claim_output(opts.output_prefix, "--output-prefix", "vffn-data")
    executor = progress = None
    try:
        executor = _start_pool(workers, tokenizer.spec, config) if workers > 0 else None
        progress = _Progress(sum(f.size for f in files), opts.progress)
        with AtomicIndexedWriter(opts.output_prefix, dtype, overwrite=opts.overwrite, lock=lock) as out:
            chunks = readers.iter_chunks(files, text_key=opts.text_key,
                                         split_on_blank_lines=opts.split_on_blank_lines,
                                         chunk_bytes=opts.chunk_bytes)
            if executor is not None:
                results = _ordered_parallel_map(process_chunk, chunks, executor, window=2 * workers + 2)
            else:
                set_state(tokenizer, config)
                results = map(process_chunk, chunks)
            t0 = time.perf_counter()
            for result in results:
                if opts.on_result is not None:
                    opts.on_result(result)
                stats = per_file[result.path]
                for line, reason, detail in result.skips:
                    if opts.strict:
                        raise StrictModeError(f"{result.path}:{line}: {reason}: {detail} (--strict)")
                    if reason == DOCUMENT_TOO_LONG:  # rare, and a whole document lost: say so as it happens
                        print(f"vffn-data: warning: {result.path}:{line}: {detail}; skipped", file=sys.stderr)
                    skips.add(result.path, line, reason, detail)
                out.add_documents(result.tokens, result.lengths)
                stats["documents_read"] += result.docs_read
                stats["documents_written"] += len(result.lengths)
                stats["skipped"] += len(result.skips)
                stats["blank_lines_ignored"] += result.blank_lines
                docs_written += len(result.lengths)
                tokens += int(result.tokens.size)
                text_bytes += result.text_bytes
                progress.update(result, docs_written, tokens, text_bytes, t0)
            if docs_written == 0:
                raise EmptyOutputError(_nothing_to_write(files, per_file, skips, opts.text_key))
            files_info = out.commit()
        elapsed = time.perf_counter() - t_start
        docs_read = sum(s["documents_read"] for s in per_file.values())
        report.update({
            "finished_at": now_iso(),
            "elapsed_s": round(elapsed, 3),
            "inputs": [{"path": f.path, "format": f.format, "compression": f.compression, "bytes": f.size,
                        **per_file[f.path]} for f in files],
            "output_prefix": os.path.abspath(opts.output_prefix),
            "output": files_info,
            "dtype": dtype.__name__,
            "options": {"text_key": opts.text_key, "split_on_blank_lines": opts.split_on_blank_lines,
                        "format": opts.format, "strict": opts.strict, "workers": workers,
                        "max_doc_mb": opts.max_doc_mb},
            "tokenizer": tokenizer.identity(),
            "documents": {"read": docs_read, "written": docs_written, "skipped": skips.total},
            "tokens": tokens,
            "eod_appended": True,
            "skipped": skips.to_dict(),
            "throughput": {"tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
                           "text_mb_per_s": round(text_bytes / max(elapsed, 1e-9) / 1e6, 3),
                           "text_bytes": text_bytes},
        })
        write_json_atomic(report_path(opts.output_prefix), report)
    finally:
        if progress is not None:
            progress.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        lock.release()
    return report
