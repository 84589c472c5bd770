"""Functions run on the ranks of a RankPool by the export tests (module level, so the pool can import them)."""

from __future__ import annotations

from pathlib import Path

from tests.training import trainer_runs as training_cases

# A passage of the bundled corpus's style, tokenized with the bundled BPE: "a batch of real text".
TEXT = ("The hacker ethic is the belief that information-sharing is a powerful positive good, and that it is an "
        "ethical duty of hackers to share their expertise by writing open-source code and facilitating access to "
        "information and to computing resources wherever possible.")


def tiny_overrides(data_prefix: str, tmp, kind: str, *extra: str) -> list[str]:
    """The training tests' tiny model with the bundled tokenizer (vocabulary 8192), so real text can be fed."""
    base = [o for o in training_cases.BASE if not o.startswith(("data.tokenizer", "model.vocab_size"))]
    return [*base, "data.tokenizer=null", "model.vocab_size=8192", f"data.paths={data_prefix}",
            f"data.cache_dir={tmp / 'cache'}", f"run_dir={tmp / kind}", f"ffn={kind}", *extra]


def real_text_batch():
    import torch

    from vffn_pretrain.data.tokenizer import build_tokenizer

    ids = build_tokenizer(None).tokenize(TEXT)
    return torch.tensor([ids[:32], ids[8:40]])


def export_and_compare(checkpoint: str, out: str) -> dict:
    """Export `checkpoint` to `out`, and return the megatron model's eval logits (reloaded at TP=1, as
    vffn-generate does) and the exported model's (loaded back with from_pretrained) on the same batch."""
    import torch
    from megatron.core import parallel_state as ps
    from transformers import AutoModelForCausalLM

    from vffn_pretrain.export.cli import export_checkpoint
    from vffn_pretrain.training.inference_loading import load_checkpoint_for_inference

    export_checkpoint(checkpoint, Path(out))
    loaded = load_checkpoint_for_inference(checkpoint)
    batch = real_text_batch()
    positions = torch.arange(batch.shape[1]).expand_as(batch)
    with torch.no_grad():
        ref = loaded.model(input_ids=batch, position_ids=positions, attention_mask=None).float()
    ps.destroy_model_parallel()
    from vffn_pretrain.export.weights import is_plain

    dense = is_plain(loaded.cfg.model, loaded.cfg.ffn)  # a plain Llama: must load without remote code
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=not dense, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(batch, use_cache=False).logits.float()
    return {"megatron": ref.numpy(), "hf": got.numpy(), "class": type(hf).__name__, "batch": batch.numpy()}


def hf_greedy_text(hf_dir: str, prompt: str, new_tokens: int) -> str:
    """The exported model's greedy continuation (KV cache on), written out as vffn-generate does: the prompt,
    then each new token detokenized on its own, stopping before end-of-document."""
    import torch
    from transformers import AutoModelForCausalLM

    from vffn_pretrain.data.tokenizer import build_tokenizer

    tok = build_tokenizer(None)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.tensor([tok.tokenize(prompt)])
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)[0, ids.shape[1]:].tolist()
    pieces = []
    for t in out:
        if t == tok.eod:
            break
        pieces.append(tok.detokenize([t]))
    return prompt + "".join(pieces)


def run_cli(module: str, argv: list[str], umask: int | None = None) -> dict:
    """Call `module.main(argv)` (under `umask`, if given); returns {"code": exit code, "stderr": what it printed
    to stderr}."""
    import contextlib
    import importlib
    import io
    import os

    from megatron.core import parallel_state as ps

    err = io.StringIO()
    code = 0
    old = os.umask(umask) if umask is not None else None
    with contextlib.redirect_stderr(err):
        try:
            importlib.import_module(module).main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            if old is not None:
                os.umask(old)
    ps.destroy_model_parallel()
    return {"code": code, "stderr": err.getvalue()}


# Run by a fresh interpreter in which vffn_pretrain cannot be imported: only transformers and the exported files.
STANDALONE = """
import sys
sys.modules["vffn_pretrain"] = None  # any import of the package now fails
sys.modules["data_tools"] = None
try:
    import vffn_pretrain  # noqa: F401
    raise SystemExit("vffn_pretrain is importable")
except ImportError:
    pass
import numpy as np, torch
from transformers import AutoModelForCausalLM
hf_dir, batch_file, out_file = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(torch.from_numpy(np.load(batch_file)), use_cache=False).logits
np.save(out_file, logits.numpy())
print(type(model).__module__)
"""


def eval_with_a_full_disk(argv: list[str]) -> dict:
    """`vffn-eval argv` whose writes of --out fail as on a full disk (run_cli's result)."""
    import errno
    from unittest import mock

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch("vffn_pretrain.evaluation.cli.write_text_atomic", full):
        return run_cli("vffn_pretrain.evaluation.cli", argv)
