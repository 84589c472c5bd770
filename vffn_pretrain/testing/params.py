"""Parameter swaps for tests: save or load other per-parameter tensors (e.g. gradients) through the checkpoint
machinery, with the same global layout as the weights."""

from __future__ import annotations

import torch


@torch.no_grad()
def swap_params_with(ddp_chunks: list, tensors: dict[torch.nn.Parameter, torch.Tensor]) -> dict:
    """Point each parameter's data at `tensors[param]`; returns the previous data to swap back.

    Lets the checkpoint machinery save or load other per-parameter tensors (e.g. gradients) with the same
    global layout as the weights.
    """
    previous = {}
    for p, t in tensors.items():
        previous[p] = p.data
        p.data = t
    return previous
