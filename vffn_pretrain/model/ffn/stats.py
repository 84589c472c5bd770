"""Per-layer running statistics for logging: loop-count histogram, mean lambda, expert load, balance loss.

Accumulated as on-device tensors (an index_add and a few sums per micro-batch; no host sync on a GPU, where
`bincount` would sync twice); `snapshot` moves them to the host once, when the trainer asks. Each rank counts only the tokens it holds (its DP shard; its sequence
shard under sequence parallelism), so summing snapshots over the ranks that hold different tokens gives the
global figures (`state.reduce_stats`).
"""

from __future__ import annotations

import torch

# Raw sums kept per layer; everything reported is derived from these, so they can be summed across ranks.
RAW_KEYS = ("loop_hist", "tokens", "lambda_sum", "lambda_tokens", "expert_counts", "balance_sum",
            "balance_weight", "graph_loop_work", "loop_work")


class FFNStats:
    """Running sums for one layer. `num_loops`: histogram bins (loop counts 1..num_loops); `num_experts`: 0 when
    the layer has no router."""

    def __init__(self, num_loops: int, num_experts: int):
        self.num_loops = num_loops
        self.num_experts = num_experts
        self._sums: dict[str, torch.Tensor] | None = None

    def _get(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self._sums is None or self._sums["tokens"].device != device:
            f64 = dict(dtype=torch.float64, device=device)
            self._sums = {
                "loop_hist": torch.zeros(self.num_loops, **f64),
                "tokens": torch.zeros((), **f64),
                "lambda_sum": torch.zeros((), **f64),
                "lambda_tokens": torch.zeros((), **f64),
                "expert_counts": torch.zeros(self.num_experts, **f64),
                "balance_sum": torch.zeros((), **f64),
                "balance_weight": torch.zeros((), **f64),
                "graph_loop_work": torch.zeros((), **f64),
                "loop_work": torch.zeros((), **f64),
            }
        return self._sums

    @torch.no_grad()
    def add(self, *, loop_index: torch.Tensor, lam: torch.Tensor | None = None,
            expert_counts: torch.Tensor | None = None, balance: torch.Tensor | None = None,
            token_weight: torch.Tensor | None = None, loop_work: tuple[int, int] | None = None) -> None:
        """Record one micro-batch of this rank's tokens.

        loop_index: per-token loop count minus one (any token shape, int64); lam: per-token lambda (same shape);
        expert_counts [N]: top-k assignments per expert; balance: the micro-batch's L_bal (0-d), weighted by this
        rank's token count; token_weight: 1/0 per token (0 = padding, not counted), same shape as loop_index;
        loop_work: (row-loops run with an autograd graph, row-loops run) in training, padding rows included.
        """
        sums = self._get(loop_index.device)
        flat = loop_index.reshape(-1)
        weights = None if token_weight is None else token_weight.reshape(-1).to(torch.float64)
        sums["loop_hist"].index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64) if weights is None
                                     else weights)
        tokens = flat.numel() if weights is None else weights.sum()
        sums["tokens"] += tokens
        if lam is not None:
            lam64 = lam.reshape(-1).to(torch.float64)
            sums["lambda_sum"] += (lam64 if weights is None else lam64 * weights).sum()
            sums["lambda_tokens"] += tokens
        if expert_counts is not None:
            sums["expert_counts"] += expert_counts.to(torch.float64)
        if balance is not None:
            sums["balance_sum"] += balance.to(torch.float64) * tokens
            sums["balance_weight"] += tokens
        if loop_work is not None:
            sums["graph_loop_work"] += loop_work[0]
            sums["loop_work"] += loop_work[1]

    def snapshot(self, reset: bool = True) -> dict:
        """Raw sums as host values (lists / floats); zeros if nothing was recorded."""
        if self._sums is None:
            out = {k: 0.0 for k in RAW_KEYS}
            out["loop_hist"] = [0.0] * self.num_loops
            out["expert_counts"] = [0.0] * self.num_experts
            return out
        flat = torch.cat([v.reshape(-1) for v in self._sums.values()]).cpu().tolist()
        out, i = {}, 0
        for key, value in self._sums.items():
            n = value.numel()
            out[key] = flat[i:i + n] if value.dim() else flat[i]
            i += n
        if reset:
            for value in self._sums.values():
                value.zero_()
        return out


def derive(raw: dict) -> dict:
    """The reported per-layer figures from raw sums (after any cross-rank reduction).

    loop_hist: token counts per loop count 1..L (ints); mean_lambda: mean fusion weight, None for kinds without
    fusion; expert_load: share of top-k assignments per expert (sums to 1), [] without a router; balance_loss:
    token-weighted mean of L_bal = N * sum f*P (1.0 = perfectly balanced), None when not computed; tokens;
    graph_work_fraction: share of the training loop work that kept an autograd graph (1.0 without token-sparse
    recursion; the rest ran for values only), None when not recorded."""
    tokens = raw["tokens"]
    counts = raw["expert_counts"]
    total = sum(counts)
    return {
        "loop_hist": [int(round(c)) for c in raw["loop_hist"]],
        "mean_lambda": raw["lambda_sum"] / raw["lambda_tokens"] if raw["lambda_tokens"] else None,
        "expert_load": [c / total for c in counts] if total else [0.0] * len(counts),
        "balance_loss": raw["balance_sum"] / raw["balance_weight"] if raw["balance_weight"] else None,
        "tokens": int(round(tokens)),
        "graph_work_fraction": raw["graph_loop_work"] / raw["loop_work"] if raw.get("loop_work") else None,
    }
