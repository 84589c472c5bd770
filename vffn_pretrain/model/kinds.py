"""The FFN kinds and what each one is made of: the one table the rest of the package asks instead of comparing
kind names. No torch, no config classes: `model.counting`, the planner and launchers import it on any machine.

| kind       | width path | adaptive depth | fixed loops | shared weights | moe |
|------------|------------|----------------|-------------|----------------|-----|
| dense      |            |                |             |                |     |
| kloop      |            |                | yes         | yes            |     |
| moe        |            |                |             |                | yes |
| versatile  | yes        | yes            |             | yes            |     |
| width_only | yes        |                |             | yes            |     |
| depth_only |            | yes            |             | yes            |     |

(docs/method.md §3-§6 for versatile, §9.4 for moe, §10 Table 3 for the ablations.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindTraits:
    """What one FFN kind is made of.

    width_path: top-k virtual experts over the shared FFN's hidden units (a router d -> N; num_experts, top_k).
    adaptive_depth: a loop head (d -> L_max) picks each token's loop count, 1..max_loops.
    fixed_loops: every token runs the shared FFN `loops` times (the k-loop baseline).
    shared_weights: one VersatileFFN module reusing the dense SwiGLU weights (its own norm replaces the pre-MLP
        norm); a dense checkpoint converts into it by a rename (train.init_from).
    moe: megatron-core's MoELayer, the dense FFN as a shared expert plus N real experts (router, num_experts,
        top_k).
    """

    name: str
    width_path: bool = False
    adaptive_depth: bool = False
    fixed_loops: bool = False
    shared_weights: bool = False
    moe: bool = False

    @property
    def plain(self) -> bool:
        """One dense SwiGLU pass behind megatron's own MLP and pre-MLP norm, nothing added (dense; a Llama)."""
        return not (self.width_path or self.adaptive_depth or self.fixed_loops or self.shared_weights or self.moe)

    @property
    def has_router(self) -> bool:
        """A router d -> N, so num_experts and top_k matter."""
        return self.width_path or self.moe

    @property
    def has_loop_head(self) -> bool:
        return self.adaptive_depth

    @property
    def width_folded(self) -> bool:
        """The width path is always on and rides in the one dense pass: H + fc2((1 + m) * a1) (width_only)."""
        return self.width_path and not self.adaptive_depth

    @property
    def settings(self) -> tuple[str, ...]:
        """The `ffn.*` shape keys this kind reads (the others are ignored for it)."""
        keys = ("num_experts", "top_k") if self.has_router else ()
        keys += ("max_loops",) if self.adaptive_depth else ()
        return keys + (("loops",) if self.fixed_loops else ())

    @property
    def model_settings(self) -> tuple[str, ...]:
        """The `ffn.*` keys whose value changes what this kind computes: its shape keys, and for a kind built on
        the dense weights the conversion ramp (`blend_in_steps`: the layer's output depends on it until the ramp
        ends). A resume compares these."""
        return self.settings + (("blend_in_steps",) if self.shared_weights else ())

    def loop_count(self, ffn) -> int:
        """How many passes of the shared FFN a token can run at most: `ffn.max_loops` for an adaptive kind,
        `ffn.loops` for k-loop, 1 otherwise. `ffn` is anything with those attributes (FFNConfig, FFNShape)."""
        if self.adaptive_depth:
            return ffn.max_loops
        return ffn.loops if self.fixed_loops else 1


KINDS: dict[str, KindTraits] = {t.name: t for t in (
    KindTraits("dense"),
    KindTraits("kloop", fixed_loops=True, shared_weights=True),
    KindTraits("moe", moe=True),
    KindTraits("versatile", width_path=True, adaptive_depth=True, shared_weights=True),
    KindTraits("width_only", width_path=True, shared_weights=True),
    KindTraits("depth_only", adaptive_depth=True, shared_weights=True),
)}

FFN_KINDS = tuple(KINDS)
SHARED_WEIGHT_KINDS = tuple(k for k, t in KINDS.items() if t.shared_weights)  # the kinds VersatileFFN serves
ADAPTIVE_DEPTH_KINDS = tuple(k for k, t in KINDS.items() if t.adaptive_depth)


def traits(kind: str) -> KindTraits:
    """The traits of `kind`; ValueError naming the known kinds for any other name."""
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown FFN kind {kind!r}; expected one of {FFN_KINDS}") from None
