"""Flat scalars from the FFN statistics, for tests to assert on (the trainer logs the per-layer statistics)."""

from __future__ import annotations

from vffn_pretrain.model.ffn.state import layer_stats


def stats_summary(stats: dict) -> dict[str, float]:
    """Flat scalars: mean_loops, mean_lambda and balance_loss averaged over layers."""
    layers = layer_stats(stats).values()
    out = {}
    if stats.get("mean_loops") is not None:
        out["mean_loops"] = stats["mean_loops"]
    for key in ("mean_lambda", "balance_loss"):
        values = [v[key] for v in layers if v[key] is not None]
        if values:
            out[key] = sum(values) / len(values)
    return out
