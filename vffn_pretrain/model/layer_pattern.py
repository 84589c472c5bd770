"""`ffn.layers`: the per-layer FFN pattern of a mixed model, parsed without torch or megatron (vffn-info uses it)."""

from __future__ import annotations

from typing import Any

from vffn_pretrain.config.errors import ConfigError
from vffn_pretrain.model.kinds import FFN_KINDS, traits


def parse_layer_pattern(pattern: Any, num_layers: int) -> list[str]:
    """The FFN kind of every layer, in layer order, from `ffn.layers`.

    pattern: a list of entries or a comma-separated string of them; an entry is a kind ("dense") or a kind
    repeated ("versatile*12"). "dense*3,versatile*12" = three dense layers, then twelve versatile ones. The
    expanded pattern must name exactly `num_layers` kinds. Raises ConfigError naming `ffn.layers`."""
    entries = [e.strip() for e in pattern.split(",")] if isinstance(pattern, str) else pattern
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError("ffn.layers", f"expected a list of FFN kinds or a string like 'dense*3,versatile*12', "
                                        f"got {pattern!r}")
    kinds: list[str] = []
    for entry in entries:
        kind, star, count = str(entry).partition("*")
        kind = kind.strip()
        if kind not in FFN_KINDS:
            raise ConfigError("ffn.layers", f"unknown FFN kind {kind!r} in {pattern!r} (known: {', '.join(FFN_KINDS)})")
        repeat = 1
        if star:
            if not count.strip().isdigit() or int(count) < 1:
                raise ConfigError("ffn.layers", f"{entry!r}: the repeat count after '*' must be a positive integer")
            repeat = int(count)
        kinds.extend([kind] * repeat)
    if len(kinds) != num_layers:
        raise ConfigError("ffn.layers", f"{pattern!r} names {len(kinds)} layers but model.num_layers={num_layers}")
    if len(set(kinds)) > 1 and any(traits(kind).moe for kind in kinds):
        raise ConfigError("ffn.layers", "moe layers cannot be mixed with other kinds (the MoE baseline sets "
                                        "model-wide megatron MoE options)")
    return kinds
