"""`vffn-generate`: sample text from any checkpoint with the inference path (per-token early exit).

    vffn-generate --checkpoint runs/tiny-versatile/checkpoints --prompt "The hacker" --max-new-tokens 60 \
        --show-loops

The checkpoint (a `checkpoint.dir` with its `latest` marker, or one `step_*` directory) carries the run's
config; the model is rebuilt at TP = PP = 1 in this process (the distributed checkpoint reshards). With
`--show-loops`, every generated token is followed by the loop count each VersatileFFN layer chose for it.
--tokenizer replaces the run's `data.tokenizer` when that file has moved since training.

Exit codes: 0 done, 2 bad input (no loadable checkpoint, a tokenizer that cannot be loaded or does not fit the
model, a bad option), 130 interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import argparse
import sys

from vffn_pretrain.process.streams import survive_closed_output


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _temperature(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _utf8_text(text: str) -> str:
    """Text the tokenizer can take: the bytes of an argument that is not UTF-8 reach Python as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"is not UTF-8 text: {ascii(text)[:80]}") from None
    return text


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vffn-generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.dir (newest checkpoint that loads) or a step_* "
                                                       "directory")
    p.add_argument("--prompt", type=_utf8_text, default="", help="text to continue (default: start from end-of-document)")
    p.add_argument("--max-new-tokens", type=_int_at_least(0), default=64)
    p.add_argument("--temperature", type=_temperature, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=_int_at_least(1), default=50)
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--show-loops", action="store_true", help="print the loop count per token and layer")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="the tokenizer, when the run's data.tokenizer has moved [the run's]")
    return p.parse_args(argv)


class LoopRecorder:
    """Records, per VersatileFFN layer, the loop count the inference path picks for the last position."""

    def __init__(self, model):
        from vffn_pretrain.model.ffn.state import ffn_modules

        self.layers = [m for m in ffn_modules([model]) if getattr(m, "adaptive", False)]
        self.last: dict[int, int] = {}
        for mod in self.layers:
            mod.register_forward_hook(self._hook)

    def _hook(self, mod, inputs, output):
        hidden = inputs[0]  # [s, b, h]: the FFN input H
        if mod.force_loops is not None:
            loops = mod.force_loops
        else:
            logits = mod.loop_head(hidden[-1, 0:1])
            loops = int(logits.argmax(-1).item()) + 1
        self.last[int(mod.layer_number)] = loops


class GenerateError(RuntimeError):
    """No checkpoint to sample from: printed as one line."""


def _load_newest(path: str, seed: int):
    """(RunConfig, model in eval mode, padded vocabulary) of the newest checkpoint that loads; each one that
    fails is reported and the previous one is tried, as the trainer does on resume."""
    from vffn_pretrain.training.inference_loading import NoLoadableCheckpoint, load_newest_for_inference

    try:
        loaded = load_newest_for_inference(path, seed=seed,
                                           say=lambda line: print(f"vffn-generate: {line}", file=sys.stderr))
    except NoLoadableCheckpoint as e:
        raise GenerateError(f"--checkpoint {e}") from None
    return loaded.cfg, loaded.model, loaded.padded_vocab_size


def generate(argv: list[str] | None = None) -> str:
    args = _parse(argv)  # before the heavy imports: --help and usage errors are instant

    import torch

    from vffn_pretrain.training.inference_loading import inference_tokenizer

    args = _parse(argv)
    cfg, model, padded_vocab = _load_newest(args.checkpoint, args.seed)
    try:
        tokenizer = inference_tokenizer(cfg, padded_vocab, args.tokenizer)
    except ValueError as e:
        raise GenerateError(str(e)) from None
    recorder = LoopRecorder(model)

    ids = tokenizer.tokenize(args.prompt) if args.prompt else [tokenizer.eod]
    device = next(model.parameters()).device  # build_model put the model on this rank's GPU, if there is one
    # Sampling happens on the CPU, from the top-k probabilities copied there: the same seed then draws the same
    # tokens on any device.
    gen = torch.Generator().manual_seed(args.seed)
    pieces, max_len = [], cfg.model.max_position_embeddings
    for _ in range(args.max_new_tokens):
        window = ids[-max_len:]
        tokens = torch.tensor([window], device=device)
        positions = torch.arange(len(window), device=device).unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=tokens, position_ids=positions, attention_mask=None)[0, -1].float()
        logits = logits[: tokenizer.vocab_size]
        if args.temperature <= 0:
            nxt = int(logits.argmax())
        else:
            top = torch.topk(logits / args.temperature, min(args.top_k, logits.numel()))
            probs = torch.softmax(top.values, -1).cpu()
            nxt = int(top.indices[int(torch.multinomial(probs, 1, generator=gen))])
        # The loops just recorded are those of the last input position, i.e. the ones that produced `nxt`.
        loops = [recorder.last[k] for k in sorted(recorder.last)]
        if nxt == tokenizer.eod:
            break
        ids.append(nxt)
        piece = tokenizer.detokenize([nxt])
        pieces.append(f"{piece}[{''.join(map(str, loops))}]" if args.show_loops and loops else piece)
    text = args.prompt + "".join(pieces)
    return text


def main(argv: list[str] | None = None) -> None:
    survive_closed_output()  # a reader that goes away (`| head`) does not stop the work
    import warnings

    from vffn_pretrain.process.interrupts import EXIT_INTERRUPTED, interrupted, interruptible

    warnings.filterwarnings("ignore")
    try:
        with interruptible():
            text = generate(argv)
    except (GenerateError, FileNotFoundError) as e:
        print(f"vffn-generate: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        print(f"vffn-generate: {interrupted(stop)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    print(text)
    if "--show-loops" in (argv if argv is not None else sys.argv):
        print("\n(each token is followed by the loop count of every VersatileFFN layer, first layer first)")


if __name__ == "__main__":
    main()
