"""``vffn-data train-tokenizer``: a byte-level BPE trained with HuggingFace ``tokenizers``.

Byte-level means every byte has a token, so any text round-trips exactly (no unknown token, no normalisation).
The special tokens ``<|endoftext|>`` (id 0, the end-of-document token) and ``<|pad|>`` (id 1) come first.
Training reads documents through the same readers as ``tokenize`` (jsonl, text, parquet, compressed); records
that are not valid UTF-8 or lack the text field are skipped, as in ``tokenize``. The output is a
``tokenizer.json`` that ``build_tokenizer`` (and any HuggingFace tooling) loads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vffn_pretrain.data.report import SkipLog, base_report, now_iso
from vffn_pretrain.data.tokenizing import readers
from vffn_pretrain.data.tokenizing.worker import WorkerConfig, _records
from vffn_pretrain.outputs.apart import check_apart, check_replaceable
from vffn_pretrain.outputs.atomic import partial_path, sweep_stale_partials, write_json_atomic
from vffn_pretrain.outputs.lock import claim_output

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass
class TrainTokenizerOptions:
    inputs: list[str]
    output: str
    vocab_size: int = 8192
    min_frequency: int = 2
    text_key: str = "text"
    split_on_blank_lines: bool = False
    format: str = "auto"
    overwrite: bool = False
    progress: bool = False
    argv: list[str] | None = None


def tokenizer_report_path(output: str | os.PathLike) -> Path:
    """``dir/name.json`` -> ``dir/name.report.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def _texts(files, opts: TrainTokenizerOptions, skips: SkipLog, counts: dict) -> Iterator[str]:
    config = WorkerConfig(text_key=opts.text_key, dtype="int32")
    for chunk in readers.iter_chunks(files, text_key=opts.text_key, split_on_blank_lines=opts.split_on_blank_lines):
        bad: list = []
        for _line, text in _records(chunk, config.text_key, bad, []):
            counts["documents"] += 1
            counts["bytes"] += len(text)
            yield text
        for line, reason, detail in bad:
            skips.add(chunk.path, line, reason, detail)


def run_train_tokenizer(opts: TrainTokenizerOptions) -> dict:
    """Train, write ``opts.output`` (atomically) and its report; return the report."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if opts.vocab_size < 256 + 2:
        raise ValueError(f"--vocab-size must be at least 258 (256 bytes + 2 special tokens), got {opts.vocab_size}")
    output = Path(opts.output)
    files = readers.resolve_inputs(opts.inputs, opts.format)
    check_apart({"--output": [output, tokenizer_report_path(output)]}, {"--input": [f.path for f in files]})
    check_replaceable(output, ours=_is_tokenizer_json, what="a tokenizer.json", flag="--output")
    if output.exists() and not opts.overwrite:
        raise FileExistsError(f"output {output} already exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    report = base_report("train-tokenizer", opts.argv)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=opts.vocab_size,
        min_frequency=opts.min_frequency,
        special_tokens=[EOD_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=opts.progress,
    )
    skips = SkipLog()
    counts = {"documents": 0, "bytes": 0}
    with claim_output(output, "--output", "vffn-data") as lock:
        sweep_stale_partials(output, warn=lambda message: print(f"vffn-data: {message}", file=sys.stderr))
        tok.train_from_iterator(_texts(files, opts, skips, counts), trainer=trainer)
        tmp = partial_path(output)
        try:
            try:
                tok.save(str(tmp))
            except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception (disk full, no permission)
                raise OSError(f"cannot write {output}: {e}") from None
            lock.verify()
            if output.exists() and not opts.overwrite:  # written meanwhile by a writer that took no lock
                raise FileExistsError(f"output {output} appeared while training; pass --overwrite to replace it")
            os.replace(tmp, output)
        finally:
            if tmp.exists():
                tmp.unlink()
        _finish(report, opts, output, files, skips, counts, t0)
    return report


def _is_tokenizer_json(path: Path) -> bool:
    """Whether `path` is a HuggingFace tokenizer.json (what this command writes)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model" in data


def _finish(report: dict, opts: TrainTokenizerOptions, output: Path, files, skips: SkipLog, counts: dict,
            t0: float) -> None:
    """Fill in and write the report of the tokenizer just written."""
    from vffn_pretrain.data.tokenizer import build_tokenizer

    built = build_tokenizer(str(output))
    report.update({
        "finished_at": now_iso(),
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "inputs": [{"path": f.path, "format": f.format, "compression": f.compression, "bytes": f.size}
                   for f in files],
        "output": str(output.resolve()),
        "options": {"vocab_size": opts.vocab_size, "min_frequency": opts.min_frequency, "text_key": opts.text_key,
                    "split_on_blank_lines": opts.split_on_blank_lines, "format": opts.format},
        "documents": {"read": counts["documents"] + skips.total, "used": counts["documents"],
                      "skipped": skips.total},
        "text_chars": counts["bytes"],
        "skipped": skips.to_dict(),
        "tokenizer": built.identity(),
    })
    write_json_atomic(tokenizer_report_path(output), report)
