"""`vffn-export`: a checkpoint (any TP/PP layout) -> a Hugging Face model directory.

    vffn-export --checkpoint runs/tiny-versatile/checkpoints --out hf/tiny-versatile [--dtype bf16|fp32]
                [--tokenizer PATH] [--overwrite]

A model whose every layer is dense gives a standard LlamaForCausalLM; any other (every kind, and mixed models
of `ffn.layers`) gives `VffnForCausalLM` (modeling_vffn.py, copied into the directory and named in
config.json's auto_map: load it with trust_remote_code=True). The directory holds model.safetensors,
config.json, generation_config.json and the tokenizer files (tokenizer.json tokenizers only): the run's
`data.tokenizer`, or --tokenizer when that file has moved since training. It is written as OUT.partial-PID next
to --out and renamed when complete; a killed export's partial is removed by the next export to the same --out.

Before any work: --out must not be, contain or lie inside --checkpoint or --tokenizer; an existing --out is
replaced only with --overwrite and only when it is a model directory (config.json and safetensors) or empty; a
second export to the same --out while one runs is refused (`OUT.lock`).

Exit codes: 0 done, 1 error (another export writes --out, the directory cannot be written), 2 bad input
(missing or incomplete checkpoint, a tokenizer that cannot be loaded or does not fit the model, --out over
the input or existing without --overwrite, or not a model directory), 130 interrupted (Ctrl-C, SIGTERM,
SIGHUP; nothing is written).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from vffn_pretrain.outputs.apart import NotOurOutput, OutputOverlapsInput, check_apart, check_replaceable
from vffn_pretrain.process.streams import survive_closed_output


class ExportError(Exception):
    """Bad input: the message is the one line printed."""


def _parse(argv):
    p = argparse.ArgumentParser(prog="vffn-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint.dir (its newest complete step) or one step_* directory")
    p.add_argument("--out", required=True, help="output directory (must not exist, unless --overwrite)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of the saved weights")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="the tokenizer to ship, when the run's data.tokenizer has moved [the run's]")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a model directory")
    return p.parse_args(argv)


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory (what vffn-export writes): config.json and safetensors weights."""
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors*"))


def check_output(out: Path, overwrite: bool, checkpoint: str | None = None, tokenizer: str | None = None) -> None:
    """Everything about --out that needs no work: apart from the inputs, replaceable, --overwrite."""
    try:
        check_apart({"--out": out}, {"--checkpoint": checkpoint, "--tokenizer": tokenizer})
        check_replaceable(out, ours=is_model_dir, what="a model directory", flag="--out")
    except (OutputOverlapsInput, NotOurOutput) as e:
        raise ExportError(str(e)) from None
    if out.exists() and not overwrite:
        raise ExportError(f"--out {out} already exists (pass --overwrite to replace it)")


def hf_tokenizer(tokenizer, max_length: int):
    """The project's tokenizer as a transformers PreTrainedTokenizerFast, or None when it is not a
    tokenizer.json tokenizer (null:N, tiktoken)."""
    from transformers import PreTrainedTokenizerFast

    from vffn_pretrain.data.tokenizer import HFTokenizer

    if not isinstance(tokenizer, HFTokenizer):
        return None
    vocab = {i: t for t, i in tokenizer._tok.get_vocab(with_added_tokens=True).items()}
    pad = vocab.get(tokenizer.pad) if tokenizer.pad >= 0 else None
    eod = vocab[tokenizer.eod]
    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer.path), eos_token=eod, bos_token=eod,
                                   unk_token=None, pad_token=pad or eod, model_max_length=max_length)


def token_ids(tokenizer) -> dict:
    pad = tokenizer.pad if tokenizer.pad >= 0 else tokenizer.eod
    return {"bos_token_id": tokenizer.eod, "eos_token_id": tokenizer.eod, "pad_token_id": pad}


def build_hf_model(loaded, tokenizer):
    """The HF model (fp32, eval mode) holding the weights of `loaded` (a loading.LoadedModel)."""
    import torch

    from vffn_pretrain.export import weights

    cfg = loaded.cfg
    sd = {k: v.detach().float() for k, v in loaded.model.state_dict().items()
          if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
    hf_sd = weights.megatron_to_hf(sd, cfg.model, cfg.ffn)
    vocab = sd["embedding.word_embeddings.weight"].shape[0]
    if weights.is_plain(cfg.model, cfg.ffn):  # every layer dense: a Llama
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**weights.llama_config_kwargs(cfg.model, vocab, token_ids(tokenizer))))
    else:
        from vffn_pretrain.export.modeling_vffn import VffnConfig, VffnForCausalLM

        VffnConfig.register_for_auto_class()
        VffnForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        config = VffnConfig(**weights.vffn_config_kwargs(cfg.model, cfg.ffn, vocab, token_ids(tokenizer)))
        model = VffnForCausalLM(config)
    missing, unexpected = model.load_state_dict(hf_sd, strict=False)
    missing = [k for k in missing if not (cfg.model.tied_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.eval()


def check_checkpoint_path(checkpoint: str) -> None:
    """--checkpoint must be a directory (a checkpoint.dir or a step_* directory); ExportError otherwise."""
    if not Path(checkpoint).is_dir():
        raise ExportError(f"--checkpoint {checkpoint}: " + ("not a directory (give a checkpoint.dir or a step_* "
                                                            "directory)" if Path(checkpoint).exists() else
                                                            "no such directory"))


def export_checkpoint(checkpoint: str, out: Path, dtype: str = "fp32", overwrite: bool = False,
                      tokenizer: str | None = None, prog: str = "vffn-export") -> Path:
    import torch
    from transformers import GenerationConfig

    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.outputs.atomic import make_partial_dir, publish_dir, sweep_stale_partials
    from vffn_pretrain.outputs.lock import claim_output
    from vffn_pretrain.training.inference_loading import (
        NoLoadableCheckpoint,
        inference_tokenizer,
        load_newest_for_inference,
    )

    check_checkpoint_path(checkpoint)
    check_output(out, overwrite, checkpoint, tokenizer)
    lock = claim_output(out, "--out", prog)
    try:
        sweep_stale_partials(out, warn=lambda message: print(f"{prog}: {message}", file=sys.stderr))
        try:  # the newest that loads; a damaged one is reported and the previous one exported
            loaded = load_newest_for_inference(checkpoint, say=lambda line: print(f"{prog}: {line}",
                                                                                   file=sys.stderr))
        except NoLoadableCheckpoint as e:
            raise ExportError(f"--checkpoint {e}") from None
        blend = ffn_state.blend_weight(loaded.cfg.ffn, loaded.step)
        if blend < 1.0:
            raise ExportError(f"--checkpoint {checkpoint}: saved at step {loaded.step}, inside its "
                              f"ffn.blend_in_steps={loaded.cfg.ffn.blend_in_steps} ramp (s={blend:.3f}; "
                              "docs/method.md §15), a blend the exported model does not compute; export a "
                              "checkpoint from that step on")
        try:
            tok = inference_tokenizer(loaded.cfg, loaded.padded_vocab_size, tokenizer)
        except ValueError as e:
            raise ExportError(str(e)) from None
        model = build_hf_model(loaded, tok)
        if dtype == "bf16":
            model = model.to(torch.bfloat16)
        tmp = make_partial_dir(out)
        try:
            model.generation_config = GenerationConfig(**token_ids(tok))
            model.save_pretrained(tmp)
            hf_tok = hf_tokenizer(tok, loaded.cfg.model.max_position_embeddings)
            if hf_tok is not None:
                hf_tok.save_pretrained(tmp)
            else:
                print(f"{prog}: tokenizer {tok.name} is not a tokenizer.json: no tokenizer files written",
                      file=sys.stderr)
            lock.verify()
            publish_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return out


def main(argv: list[str] | None = None) -> None:
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    import warnings

    from vffn_pretrain.outputs.lock import OutputInUse
    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible

    warnings.filterwarnings("ignore")
    args = _parse(argv)
    out = Path(args.out)
    try:
        with interruptible():
            export_checkpoint(args.checkpoint, out, args.dtype, args.overwrite, args.tokenizer)
    except ExportError as e:
        print(f"vffn-export: {e}", file=sys.stderr)
        sys.exit(2)
    except OutputInUse as e:
        print(f"vffn-export: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # the directory cannot be written (permissions, disk full): nothing was published
        print(f"vffn-export: cannot write --out {out}: {e}; nothing was written", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as stop:
        print(f"vffn-export: {interrupted(stop)}; nothing was written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    print(f"vffn-export: wrote {out}")


if __name__ == "__main__":
    main()
