"""planning/layout.py reads pipeline layouts without megatron; megatron-core's own parser and validation
(`PipelineParallelLayerLayout`) is the reference: on hand-picked and random strings both accept the same ones,
and split the accepted ones into the same chunks."""

from __future__ import annotations

import random

import pytest

from vffn_pretrain.planning import layout

CASES = ["Ett|ttL", "E|ttttL", "Ettttt|L", "E|tt|tt|L", "Et|t|t|tL", "Ett|(tt|)*2,tL", "E,t*3|t*3L", "(Et|tL)*1",
         "Ettt|ttL", "Ettt|tL|", "|EttttL", "tE|tttL", "Ett|ttLL", "EEtt|ttL", "Ett|tmL", "Ett|txL", "", "|",
         "E(t|)*3tL", "Et*0|ttttL", "((t)*2)*2", "Ett|ttL*1", "E|(t|)*4L", "Et*2|t*2L", "E t|ttL", "ett|ttL",
         "(|)*3EttttL", "E(tt)*2|L", "Ettt*1|t|L|"]


def _megatron(text: str, pp: int, num_layers: int):
    """megatron's chunks (symbol strings in model order) or None if it refuses."""
    from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

    symbol = {"embedding": "E", "decoder": "t", "loss": "L", "mtp": "m"}
    try:
        parsed = PipelineParallelLayerLayout(text, pp)
        parsed.validate_layer_layout(num_layers=num_layers, mtp_num_layers=None)
    except Exception:  # noqa: BLE001 - any refusal counts
        return None
    v = parsed.virtual_pipeline_model_parallel_size
    return ["".join(symbol[x.name] for x in parsed.layout[c % pp][c // pp]) for c in range(pp * v)]


def _ours(text: str, pp: int, num_layers: int):
    try:
        cuts = layout.read(text, pp, num_layers)
    except layout.LayoutError:
        return None
    flat = "E" + "t" * num_layers + "L"
    return [flat[a:b] for a, b in zip(cuts, cuts[1:])]


def _random_layout(rng: random.Random) -> str:
    pieces = ["E", "t", "t", "t", "L", "|", "|", "(", ")", "*2", "*3", ",", "m", "x"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))


@pytest.mark.parametrize("pp", [1, 2, 4])
def test_reader_agrees_with_megatron(pp):
    rng = random.Random(pp)
    texts = CASES + [_random_layout(rng) for _ in range(200)]
    # Random strings are mostly refused; also mutate valid layouts one character at a time.
    for base in ("Ett|ttL", "Et|t|t|tL", "E|tt|(t|)*2,tL"):
        for i in range(len(base) + 1):
            for ch in "Etl|L(),*2":
                texts += [base[:i] + ch + base[i:], base[:i] + base[i + 1:]]
    accepted = 0
    for text in texts:
        for num_layers in (3, 4, 5):
            expect = _megatron(text, pp, num_layers)
            assert _ours(text, pp, num_layers) == expect, (text, pp, num_layers)
            accepted += expect is not None
    assert accepted > 20  # the corpus exercises acceptance, not only refusals


def test_layouts_the_search_writes_round_trip():
    for split in ((3, 2, 2, 3), (1, 5), (2, 2, 1, 1)):
        cuts = layout.split_cuts(split)
        assert layout.layers_per_chunk(cuts) == split
        assert layout.read(layout.layout_string(cuts), 2, sum(split)) == cuts
    assert layout.layout_string(layout.read("E|(tt|)*2L", 2, 4)) == "E|tt|tt|L"
    assert layout.layers_per_chunk(layout.read("E|ttttL", 2, 4)) == (0, 4)  # a chunk holding only the embedding


def test_a_runaway_repeat_is_refused_not_expanded():
    with pytest.raises(layout.LayoutError, match="more than"):
        layout.read("E(t|)*99999999999999L", 2, 4)
    with pytest.raises(layout.LayoutError, match="more than"):
        layout.read("Et*" + "9" * 5000 + "|L", 2, 4)
