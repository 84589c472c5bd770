"""The FFN statistics the trainer reports (loop histograms, expert load, mean loops), per window."""

from __future__ import annotations

from vffn_pretrain.model.ffn import state as ffn_state


def window_ffn_stats(ddp_chunks: list) -> dict | None:
    """Per-layer FFN statistics since the last call, summed over the ranks holding different tokens and merged
    over pipeline stages (collective: every rank calls it). None for FFNs without any (dense, kloop)."""
    stats = ffn_state.reduce_stats(ffn_state.collect_stats(ddp_chunks, reset=True))
    return stats if ffn_state.layer_stats(stats) else None
