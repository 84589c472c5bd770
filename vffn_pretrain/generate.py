"""`vffn-generate`: sample text from any checkpoint with the inference path (per-token early exit).

    vffn-generate --checkpoint runs/tiny-versatile/checkpoints --prompt "The hacker" --max-new-tokens 60 \
        --show-loops

The checkpoint (a `checkpoint.dir` with its `latest` marker, or one `step_*` directory) carries the run's
config; the model is rebuilt at TP = PP = 1 in this process (the distributed checkpoint reshards). With
`--show-loops`, every generated token is followed by the loop count each VersatileFFN layer chose for it.
"""

from __future__ import annotations

import argparse
import sys


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vffn-generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.dir (uses `latest`) or a step_* directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-document)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show-loops", action="store_true", help="print the loop count per token and layer")
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
        from vffn_pretrain.model.ffn.functional import router_logits

        hidden = inputs[0]  # [s, b, h]: the FFN input H
        if mod.force_loops is not None:
            loops = mod.force_loops
        else:
            logits = router_logits(hidden[-1, 0:1], mod.loop_head.weight)
            loops = int(logits.argmax(-1).item()) + 1
        self.last[int(mod.layer_number)] = loops


def generate(argv: list[str] | None = None) -> str:
    import torch

    from vffn_pretrain.data.tokenizer import build_tokenizer
    from vffn_pretrain.loading import load_checkpoint_for_inference

    args = _parse(argv)
    loaded = load_checkpoint_for_inference(args.checkpoint, seed=args.seed)
    model, cfg = loaded.model, loaded.cfg
    tokenizer = build_tokenizer(cfg.data.tokenizer)
    recorder = LoopRecorder(model)

    ids = tokenizer.tokenize(args.prompt) if args.prompt else [tokenizer.eod]
    gen = torch.Generator().manual_seed(args.seed)
    pieces, max_len = [], cfg.model.max_position_embeddings
    for _ in range(args.max_new_tokens):
        window = ids[-max_len:]
        tokens = torch.tensor([window])
        positions = torch.arange(len(window)).unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=tokens, position_ids=positions, attention_mask=None)[0, -1].float()
        logits = logits[: tokenizer.vocab_size]
        if args.temperature <= 0:
            nxt = int(logits.argmax())
        else:
            top = torch.topk(logits / args.temperature, min(args.top_k, logits.numel()))
            nxt = int(top.indices[torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)])
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
    import warnings

    warnings.filterwarnings("ignore")
    try:
        text = generate(argv)
    except FileNotFoundError as e:
        print(f"vffn-generate: {e}", file=sys.stderr)
        sys.exit(2)
    print(text)
    if "--show-loops" in (argv if argv is not None else sys.argv):
        print("\n(each token is followed by the loop count of every VersatileFFN layer, first layer first)")


if __name__ == "__main__":
    main()
