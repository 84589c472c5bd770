"""What the trainer sets on, and reads from, the FFN layers of a model: temperature, statistics, eval overrides.

All functions take the model chunks this rank holds (raw GPTModel or DDP-wrapped, any mix) and find the FFN
modules by walking `.modules()`: VersatileFFN (all shared-weight kinds) and the MoE baseline's router carry an
`ffn_stats` accumulator and their global `layer_number`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist

from vffn_pretrain.model.ffn.stats import RAW_KEYS, derive


def ffn_modules(chunks) -> Iterator:
    """Every module with FFN statistics in `chunks` (a model, or a list of chunks), in layer order."""
    if isinstance(chunks, torch.nn.Module):
        chunks = [chunks]
    found = [m for chunk in chunks for m in chunk.modules() if hasattr(m, "ffn_stats")]
    return iter(sorted(found, key=lambda m: m.layer_number or 0))


def _versatile_modules(chunks) -> Iterator:
    from vffn_pretrain.model.ffn.versatile import VersatileFFN

    return (m for m in ffn_modules(chunks) if isinstance(m, VersatileFFN))


# ---- temperature (docs/method.md §4.2, §12 #9) ----------------------------------------------------------------------------


def current_tau(ffn_cfg, step: int, total_steps: int) -> float:
    """tau_t = max(tau0 * decay**t, tau_min), t = 0-based global optimizer step (the first update uses t = 0).

    With ffn_cfg.tau_decay_to_end the decay is (tau_min / tau0) ** (1 / (total_steps - 1)), so the last step of the
    run (t = total_steps - 1) uses exactly tau_min. A pure function of the step: resuming from a checkpoint
    restores tau from the restored step count."""
    t = max(int(step), 0)
    if ffn_cfg.tau_decay_to_end:
        last = max(int(total_steps) - 1, 1)
        if t >= last:
            return float(ffn_cfg.tau_min)
        decay = (ffn_cfg.tau_min / ffn_cfg.tau0) ** (1.0 / last)
    else:
        decay = ffn_cfg.tau_decay
    # exp/log form: no overflow or denormal for large t
    return float(max(ffn_cfg.tau0 * math.exp(t * math.log(decay)), ffn_cfg.tau_min))


def blend_weight(ffn_cfg, step: int) -> float:
    """s_t = min(t / ffn.blend_in_steps, 1) for the 0-based optimizer step t (1.0 when blend_in_steps is 0): the
    share of the kind's own output in H^(1) + s * (Y - H^(1)) (docs/method.md §15). A pure function of the step,
    like tau, so a resumed run continues the same ramp."""
    steps = int(getattr(ffn_cfg, "blend_in_steps", 0) or 0)
    return 1.0 if steps <= 0 else min(max(int(step), 0) / steps, 1.0)


def set_training_step(chunks, step: int, total_steps: int) -> float | None:
    """Set tau and the blend-in weight for `step` on every VersatileFFN in the chunks (the trainer calls it before
    each optimizer step and before each evaluation; inference tools with the checkpoint's step); returns the tau
    set (None if no such layer)."""
    tau = None
    for mod in _versatile_modules(chunks):
        mod.tau = current_tau(mod.ffn_cfg, step, total_steps)
        mod.blend = blend_weight(mod.ffn_cfg, step)
        tau = mod.tau
    return tau


# ---- eval / conversion overrides --------------------------------------------------------------------------------


def set_inference_overrides(chunks, force_loops: int | None = None, disable_width: bool = False) -> None:
    """force_loops: every token runs exactly this many loops (loop head bypassed), None = the predictor decides;
    disable_width: skip the width path (lambda = 0). Apply in train and eval mode; the kloop and dense kinds
    ignore them. With force_loops=1 and disable_width=True, a converted dense checkpoint computes the dense FFN."""
    for mod in _versatile_modules(chunks):
        if force_loops is not None and mod.adaptive and not 1 <= force_loops <= mod.max_loops:
            raise ValueError(f"force_loops={force_loops} is outside 1..{mod.max_loops}")
        mod.force_loops = force_loops if mod.adaptive else None
        mod.disable_width = bool(disable_width)


# ---- statistics -------------------------------------------------------------------------------------------------


def collect_stats(chunks, reset: bool = True) -> dict:
    """Statistics since the last reset on this rank: {layer_number: {...}, ..., "mean_loops": float | None}.

    Per layer: loop_hist (token counts for loop counts 1..L), mean_lambda (None for kinds without fusion),
    expert_load (assignment shares, [] without router), balance_loss (token-weighted mean of N*sum f*P, None when
    off or in eval), tokens, plus the raw sums under "raw" (what reduce_stats adds up). mean_loops: mean loop count
    over all layers and tokens. One host sync per layer; call it at the logging interval."""
    out: dict = {}
    for mod in ffn_modules(chunks):
        raw = mod.ffn_stats.snapshot(reset=reset)
        out[int(mod.layer_number)] = {**derive(raw), "raw": raw}
    out["mean_loops"] = _mean_loops(out)
    out["_token_group_has_tp"] = any(bool(m.config.sequence_parallel) for m in ffn_modules(chunks))
    return out


def graph_work_fraction(stats: dict) -> float | None:
    """Share of the training loop work, over all layers, that kept an autograd graph (token-sparse recursion
    runs the rest for values only); None when no layer recorded any."""
    with_graph = total = 0.0
    for layer in layer_stats(stats).values():
        with_graph += layer["raw"].get("graph_loop_work", 0.0)
        total += layer["raw"].get("loop_work", 0.0)
    return with_graph / total if total else None


def _mean_loops(stats: dict) -> float | None:
    num, den = 0.0, 0.0
    for key, layer in stats.items():
        if isinstance(key, int):
            hist = layer["raw"]["loop_hist"]
            num += sum((i + 1) * c for i, c in enumerate(hist))
            den += sum(hist)
    return num / den if den else None


def reduce_stats(stats: dict, group=None, *, pipeline: bool = True) -> dict:
    """Sum `collect_stats` results over ranks. Collective over `group` (and the pipeline group).

    group None: the ranks that hold different tokens of the same layers, i.e. DP x CP, times TP under sequence
    parallelism (without SP the TP ranks hold copies, and would be counted twice). pipeline: also merge the
    layers held by the other pipeline stages (all_gather_object over the pipeline group), so every rank returns
    every layer."""
    from megatron.core import parallel_state as ps

    if group is None:
        group = (ps.get_tensor_and_data_parallel_group(with_context_parallel=True)
                 if stats.get("_token_group_has_tp") else ps.get_data_parallel_group(with_context_parallel=True))
    layers = sorted(k for k in stats if isinstance(k, int))
    flat = []
    for n in layers:
        raw = stats[n]["raw"]
        for key in RAW_KEYS:
            value = raw[key]
            flat.extend(value if isinstance(value, list) else [value])
    merged: dict = {}
    if flat and dist.is_initialized() and dist.get_world_size(group) > 1:
        t = torch.tensor(flat, dtype=torch.float64,
                         device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                         else torch.device("cpu"))
        dist.all_reduce(t, group=group)
        flat = t.cpu().tolist()
    i = 0
    for n in layers:
        raw = {}
        for key in RAW_KEYS:
            value = stats[n]["raw"][key]
            size = len(value) if isinstance(value, list) else 1
            raw[key] = flat[i:i + size] if isinstance(value, list) else flat[i]
            i += size
        merged[n] = {**derive(raw), "raw": raw}
    if pipeline and dist.is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
        gathered: list = [None] * ps.get_pipeline_model_parallel_world_size()
        dist.all_gather_object(gathered, merged, group=ps.get_pipeline_model_parallel_group())
        for part in gathered:
            merged.update(part)
    out = {n: merged[n] for n in sorted(merged)}
    out["mean_loops"] = _mean_loops(out)
    out["_token_group_has_tp"] = stats.get("_token_group_has_tp", False)
    return out


def layer_stats(stats: dict) -> dict[int, dict]:
    """Only the per-layer entries of a collect_stats / reduce_stats result."""
    return {k: v for k, v in stats.items() if isinstance(k, int)}
