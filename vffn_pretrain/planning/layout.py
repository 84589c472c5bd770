"""megatron-core's `pipeline_model_parallel_layout` strings, read without importing megatron (or torch).

A layout lists the pipeline chunks in model order, separated by `|`: `E` the embedding, `t` one transformer layer,
`L` the final norm, LM head and loss (`m`, multi-token prediction, is not used by this project). Commas are
cosmetic; `x*n` repeats one character and `(...)*n` a group, e.g. `Ett|(tt|)*2,tL` = `Ett|tt|tt|tL`. Chunk c runs
on pipeline rank c mod PP. megatron-core 0.16.1 accepts a layout (`PipelineParallelLayerLayout`, its
`parse_str_to_list` and `validate_layer_layout`) when its chunk count is a multiple of PP, the embedding comes
first and the loss last, each exactly once, and it names exactly `model.num_layers` transformer layers. Chunks may
be empty or hold only the embedding or the loss. `tests/planning/test_layout.py` checks this reader accepts and
splits exactly what megatron's own does.

A layout is then a contiguous cut of the items [E, t_1 .. t_n, L]: `cuts[c]` is the index of chunk c's first item,
cuts[-1] = n + 2.
"""

from __future__ import annotations

import re

SYMBOLS = "ELtm"
MAX_EXPANDED = 1_000_000  # characters: a repeat count beyond this is a typo, not a model (and would not fit memory)


class LayoutError(ValueError):
    """A layout megatron-core would refuse (the message says why)."""


def _expand(layout: str) -> str:
    """Apply megatron's two rewriting passes: every `(group)*n` (innermost text without ')'), then every `x*n`."""
    def repeat(match: re.Match) -> str:
        count = match.group(2).lstrip("0") or "0"
        if len(count) > 7 or len(match.group(1)) * int(count) > MAX_EXPANDED:
            raise LayoutError(f"{match.group(0)!r} repeats to more than {MAX_EXPANDED} characters")
        return match.group(1) * int(count)

    text = layout.replace(",", "")
    text = re.sub(r"\(([^)]+)\)\*(\d+)", repeat, text)
    text = re.sub(r"(.)\*(\d+)", repeat, text)
    if len(text) > MAX_EXPANDED:
        raise LayoutError(f"expands to more than {MAX_EXPANDED} characters")
    return text


def parse(layout: str, pp: int) -> list[str]:
    """The chunks of `layout` (each a string of E/t/L symbols), refusing what megatron refuses to read for
    pipeline size `pp`."""
    if not isinstance(layout, str):
        raise LayoutError(f"must be a string, got {layout!r}")
    chunks = _expand(layout).split("|")
    for chunk in chunks:
        bad = next((ch for ch in chunk if ch not in SYMBOLS), None)
        if bad is not None:
            raise LayoutError(f"{bad!r} is not a layer symbol (E embedding, t transformer layer, L loss)")
    if len(chunks) % pp:
        raise LayoutError(f"{len(chunks)} chunks are not a multiple of parallel.pp={pp}")
    return chunks


def validate(chunks: list[str], num_layers: int) -> None:
    """megatron's validate_layer_layout for a model without multi-token prediction."""
    flat = "".join(chunks)
    if "m" in flat:
        raise LayoutError("multi-token prediction layers (m) are not supported")
    if flat.count("E") != 1 or not flat.startswith("E"):
        raise LayoutError("the embedding E must come first, exactly once")
    if flat.count("L") != 1 or not flat.endswith("L"):
        raise LayoutError("the loss L must come last, exactly once")
    if flat.count("t") != num_layers:
        raise LayoutError(f"names {flat.count('t')} transformer layers, model.num_layers is {num_layers}")


def read(layout: str, pp: int, num_layers: int) -> tuple[int, ...]:
    """The item cuts of a layout megatron accepts for `pp` ranks and `num_layers` layers (LayoutError if not)."""
    chunks = parse(layout, pp)
    validate(chunks, num_layers)
    cuts = [0]
    for chunk in chunks:
        cuts.append(cuts[-1] + len(chunk))
    return tuple(cuts)


def virtual_stages(layout: str, pp: int) -> int:
    """VPP implied by a layout: its chunks per pipeline rank."""
    return len(parse(layout, pp)) // pp


def split_cuts(split: tuple[int, ...]) -> tuple[int, ...]:
    """Cuts of a split of layer counts per chunk with the embedding on the first chunk and the loss on the last."""
    cuts, at = [0], 1
    for n in split[:-1]:
        at += n
        cuts.append(at)
    return (*cuts, at + split[-1] + 1)


def layers_per_chunk(cuts: tuple[int, ...]) -> tuple[int, ...]:
    """Transformer layers in each chunk (the embedding is item 0, the loss the last item)."""
    last = cuts[-1] - 1
    return tuple(max(0, min(b, last) - max(a, 1)) for a, b in zip(cuts, cuts[1:]))


def layout_string(cuts: tuple[int, ...]) -> str:
    """The layout string of item cuts, written out in full (e.g. `Ett|ttL`)."""
    last = cuts[-1] - 1
    symbols = ["E" if i == 0 else "L" if i == last else "t" for i in range(cuts[-1])]
    return "|".join("".join(symbols[a:b]) for a, b in zip(cuts, cuts[1:]))
