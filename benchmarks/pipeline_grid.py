"""The grid of pipeline cases the planner is validated on (benchmarks/pipeline_schedules.py measures them on
megatron's own schedules, benchmarks/pipeline_search.py checks the search): 354M (15 layers) and 7B (32 layers)
at micro-batch 1 x 4096 tokens, PP 2 / 4 / 8, VPP 1 / 2, and three FFN mixes: `versatile` (every layer
VersatileFFN, uniform loop mixes), `mixed` (`ffn.layers`: dense in the first third, versatile after) and `skewed`
(versatile with trained-like loop mixes, deep recursion mid-model). Costs are the planner's analytic H100 figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline_plan import SHAPES, ffn_pattern, skewed_mix

from vffn_pretrain.model import counting
from vffn_pretrain.planning import costs
from vffn_pretrain.planning.costs import ItemCost

MODELS = ("354m", "7b")
MIXES = ("versatile", "mixed", "skewed")
PPS = (2, 4, 8)
VPPS = (1, 2)


@dataclass(frozen=True)
class Case:
    model: str
    mix: str
    p: int
    v: int
    m: int

    @property
    def name(self) -> str:
        return f"{self.model}/{self.mix}/p{self.p}/v{self.v}/m{self.m}"


def items(model: str, mix: str) -> list[ItemCost]:
    n, d, ff, heads = SHAPES[model]
    shape = counting.ModelShape(n, d, ff, heads, None, 50304, 4096)
    ffns = ffn_pattern("mixed" if mix == "mixed" else "versatile", n)
    mixes = [skewed_mix(i, n) if mix == "skewed" else None for i in range(n)]
    return costs.model_items(shape, ffns, costs.StepShape(1, 4096), mixes)


def cases(micro_per_pp: tuple[int, ...], models=MODELS, mixes=MIXES, pps=PPS, vpps=VPPS) -> list[Case]:
    """Every combination whose p x v chunks each get a layer; m = k x PP for each k of micro_per_pp (a multiple of
    PP, as megatron's interleaved schedule needs)."""
    out = []
    for model in models:
        layers = SHAPES[model][0]
        for mix in mixes:
            for p in pps:
                for v in vpps:
                    if p * v <= layers:
                        out += [Case(model, mix, p, v, k * p) for k in micro_per_pp]
    return out
