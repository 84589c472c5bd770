"""``vffn-data merge``: concatenate indexed datasets (``.bin/.idx`` prefixes) into one, in the order given.

Every input is verified first. All inputs must share the token dtype, and, when their reports say which
tokenizer made them, the tokenizer (by content hash): merging ids from different vocabularies would make
silent garbage. The .bin files are streamed, never loaded whole; the output is written atomically.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from vffn_pretrain.data.prefix import check_output, prefix_files, report_path
from vffn_pretrain.data.report import base_report, now_iso, read_report
from vffn_pretrain.data.tokenizing.writer import AtomicIndexedWriter
from vffn_pretrain.outputs.atomic import write_json_atomic


class MergeError(ValueError):
    """The inputs cannot be merged (dtype or tokenizer mismatch)."""


@dataclass
class MergeOptions:
    inputs: list[str]
    output_prefix: str
    overwrite: bool = False
    allow_mixed_tokenizers: bool = False
    argv: list[str] | None = None


def run_merge(opts: MergeOptions) -> dict:
    from vffn_pretrain.data.indexed import verify_prefix
    from vffn_pretrain.outputs.apart import check_apart
    from vffn_pretrain.outputs.lock import claim_output

    if len(opts.inputs) < 1:
        raise MergeError("merge needs at least one input prefix")
    check_apart({"--output-prefix": prefix_files(opts.output_prefix)},
                {"--input": [f for p in opts.inputs for f in prefix_files(p)]})
    check_output(opts.output_prefix, opts.overwrite)
    t0 = time.perf_counter()
    report = base_report("merge", opts.argv)
    infos = [verify_prefix(p) for p in opts.inputs]
    dtypes = {info.dtype.name for info in infos}
    if len(dtypes) > 1:
        detail = ", ".join(f"{i.prefix}: {i.dtype.name}" for i in infos)
        raise MergeError(f"inputs have different token dtypes ({detail})")
    tokenizers = {}
    for prefix in opts.inputs:
        rep = read_report(report_path(prefix))
        if rep and "tokenizer" in rep:
            tokenizers[prefix] = rep["tokenizer"]
    hashes = {t.get("hash") for t in tokenizers.values()}
    if len(hashes) > 1 and not opts.allow_mixed_tokenizers:
        detail = ", ".join(f"{p}: {t.get('name')} ({str(t.get('hash'))[:12]})" for p, t in tokenizers.items())
        raise MergeError(f"inputs were tokenized with different tokenizers ({detail}); "
                         f"pass --allow-mixed-tokenizers if that is really intended")

    if sum(i.num_documents for i in infos) == 0:
        raise MergeError(f"the inputs hold no documents ({', '.join(opts.inputs)}); nothing was written")
    with claim_output(opts.output_prefix, "--output-prefix", "vffn-data") as lock, \
            AtomicIndexedWriter(opts.output_prefix, infos[0].dtype.type, overwrite=opts.overwrite, lock=lock) as out:
        for prefix in opts.inputs:
            out.add_index(prefix)
        files_info = out.commit()
        report.update({
            "finished_at": now_iso(),
            "elapsed_s": round(time.perf_counter() - t0, 3),
            "inputs": [{"prefix": os.path.abspath(i.prefix), "documents": i.num_documents, "sequences": i.num_sequences,
                        "tokens": i.num_tokens} for i in infos],
            "output_prefix": os.path.abspath(opts.output_prefix),
            "output": files_info,
            "dtype": infos[0].dtype.name,
            "documents": {"read": sum(i.num_documents for i in infos), "written": sum(i.num_documents for i in infos),
                          "skipped": 0},
            "tokens": sum(i.num_tokens for i in infos),
            "tokenizer": next(iter(tokenizers.values())) if len(hashes) == 1 else None,
            "input_tokenizers": tokenizers,
        })
        write_json_atomic(report_path(opts.output_prefix), report)
    return report
