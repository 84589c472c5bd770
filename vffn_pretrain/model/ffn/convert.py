"""Dense checkpoint -> FFN variant: which keys move, and which are new (continued pre-training, docs/method.md §8, §12 #14).

Keys are megatron's, per transformer layer (`decoder.layers.<i>.` + suffix; the same suffixes appear in
torch_dist sharded keys). The attention, embeddings and final norm keep their names for every kind.

| kind                                          | dense key                    | variant key                           |
|-----------------------------------------------|------------------------------|---------------------------------------|
| versatile, depth_only, width_only, kloop      | pre_mlp_layernorm.weight     | mlp.norm.weight                       |
|                                               | mlp.linear_fc1.weight        | mlp.linear_fc1.weight (unchanged)     |
|                                               | mlp.linear_fc2.weight        | mlp.linear_fc2.weight (unchanged)     |
| moe                                           | mlp.linear_fc1.weight        | mlp.shared_experts.linear_fc1.weight  |
|                                               | mlp.linear_fc2.weight        | mlp.shared_experts.linear_fc2.weight  |
|                                               | pre_mlp_layernorm.weight     | pre_mlp_layernorm.weight (unchanged)  |

New (missing from a dense checkpoint, keep their fresh N(0, 0.02) init truncated at 3 sigma): mlp.router.weight
(versatile, width_only, moe), mlp.loop_head.weight (versatile, depth_only), mlp.experts.* (moe). megatron's
`_extra_state` entries of the linear layers move with their weights.
"""

from __future__ import annotations

import re

from vffn_pretrain.model.kinds import traits


def dense_to_variant_key_map(kind: str) -> dict[str, str]:
    """Per-layer key fragments to rename when loading a dense checkpoint into `kind` ({} for dense)."""
    t = traits(kind)  # ValueError for an unknown kind
    if t.shared_weights:
        return {".pre_mlp_layernorm.": ".mlp.norm."}
    if t.moe:
        return {".mlp.linear_fc1.": ".mlp.shared_experts.linear_fc1.",
                ".mlp.linear_fc2.": ".mlp.shared_experts.linear_fc2."}
    return {}


def new_parameter_patterns(kind: str) -> list[str]:
    """Regexes of the variant's keys a dense checkpoint lacks (the only keys allowed to be missing)."""
    t = traits(kind)  # ValueError for an unknown kind
    return ([r"\.mlp\.router\.weight$"] * t.has_router
            + [r"\.mlp\.loop_head\.weight$"] * t.has_loop_head
            + [r"\.mlp\.router\.expert_bias$", r"\.mlp\.experts\."] * t.moe)


def is_new_parameter(key: str, kind: str) -> bool:
    return any(re.search(p, key) for p in new_parameter_patterns(kind))
