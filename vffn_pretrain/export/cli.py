"""`vffn-export`: a checkpoint (any TP/PP layout) -> a Hugging Face model directory.

    vffn-export --checkpoint runs/tiny-versatile/checkpoints --out hf/tiny-versatile [--dtype bf16|fp32]

ffn=dense gives a standard LlamaForCausalLM; every other kind gives `VffnForCausalLM` (modeling_vffn.py, copied
into the directory and named in config.json's auto_map: load it with trust_remote_code=True). The directory
holds model.safetensors, config.json, generation_config.json and the tokenizer files (tokenizer.json
tokenizers only). It is written under a temporary name next to --out and renamed when complete.

Exit codes: 0 done, 1 error, 2 bad input (missing or incomplete checkpoint, --out exists without --overwrite).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from vffn_pretrain.model.kinds import traits


class ExportError(Exception):
    """Bad input: the message is the one line printed."""


def _parse(argv):
    p = argparse.ArgumentParser(prog="vffn-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint.dir (its newest complete step) or one step_* directory")
    p.add_argument("--out", required=True, help="output directory (must not exist, unless --overwrite)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of the saved weights")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p.parse_args(argv)


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ExportError(f"--out {out} already exists (pass --overwrite to replace it)")


def publish(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` directory to `out`, replacing an existing `out` only once `tmp` is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


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
    if traits(cfg.ffn.kind).plain:  # dense: a Llama
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


def export_checkpoint(checkpoint: str, out: Path, dtype: str = "fp32", overwrite: bool = False) -> Path:
    import torch
    from transformers import GenerationConfig

    from vffn_pretrain.data.tokenizer import build_tokenizer
    from vffn_pretrain.model.ffn import state as ffn_state
    from vffn_pretrain.training.inference_loading import load_checkpoint_for_inference

    check_output(out, overwrite)
    try:
        loaded = load_checkpoint_for_inference(checkpoint)
    except FileNotFoundError:
        raise ExportError(f"--checkpoint {checkpoint}: neither a checkpoint (no metadata.json) nor a "
                          "checkpoint.dir holding a complete step_* checkpoint") from None
    except BaseException as e:  # noqa: BLE001 - torch's CheckpointException is a BaseException
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"--checkpoint {checkpoint}: cannot be loaded (incomplete or damaged?): {first}") from None
    blend = ffn_state.blend_weight(loaded.cfg.ffn, loaded.step)
    if blend < 1.0:
        raise ExportError(f"--checkpoint {checkpoint}: saved at step {loaded.step}, inside its ffn.blend_in_steps="
                          f"{loaded.cfg.ffn.blend_in_steps} ramp (s={blend:.3f}; docs/method.md §15), a blend the "
                          "exported model does not compute; export a checkpoint from that step on")
    tokenizer = build_tokenizer(loaded.cfg.data.tokenizer)
    model = build_hf_model(loaded, tokenizer)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    tmp = staging_dir(out)
    try:
        model.generation_config = GenerationConfig(**token_ids(tokenizer))
        model.save_pretrained(tmp)
        tok = hf_tokenizer(tokenizer, loaded.cfg.model.max_position_embeddings)
        if tok is not None:
            tok.save_pretrained(tmp)
        else:
            print(f"vffn-export: tokenizer {tokenizer.name} is not a tokenizer.json: no tokenizer files written",
                  file=sys.stderr)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    args = _parse(argv)
    out = Path(args.out)
    try:
        export_checkpoint(args.checkpoint, out, args.dtype, args.overwrite)
    except ExportError as e:
        print(f"vffn-export: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"vffn-export: wrote {out}")


if __name__ == "__main__":
    main()
