"""Resume across optimizer layouts: optimizer state written by one precision or one Adam, loaded into another.

megatron-core 0.16.1 saves the (non-distributed) optimizer in one of two layouts, by precision:
- fp32 parameters (FP32Optimizer): {"state": {i: {"exp_avg", "exp_avg_sq"}}, "param_groups": [...]}; the
  weights themselves are the model's;
- bf16 parameters (Float16OptimizerWithFloat16Params): {"optimizer": <the same>, "fp32_from_fp16_params": the fp32
  main weights}, saved as `optimizer.state.fp32_param.<weight>` next to the bf16 model weights.
And Adam keeps its step count one of two ways: torch's Adam/AdamW one `step` per parameter (megatron saves it once,
as `common_step`), the fused Adams (transformer-engine's, apex's) one `step` per parameter group.

`LoadPlan` asks the checkpoint for what it holds, in its own layout, and hands the state to this run's optimizer
in the run's layout: the fp32 weights go exactly to whichever tensors hold this run's fp32 weights (rounded once
to bf16 for a bf16 model), the moments unchanged, the step count moved between the per-parameter and the
per-group form. The distributed optimizer (parallel.distributed_optimizer) saves one layout for fp32 and bf16
(fp32 main weights either way) and keeps its step itself; switching it on or off between runs is refused
(`LayoutRefused`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor
from megatron.core.optimizer import Float16OptimizerWithFloat16Params, FP32Optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

log = logging.getLogger(__name__)

FP32_COPY_PREFIX = "optimizer.state.fp32_param"  # megatron's key prefix of the bf16 layout's fp32 main weights


@dataclass(frozen=True)
class Layout:
    """distributed: the distributed optimizer's layout; fp32_copy: fp32 main weights kept apart from the (bf16)
    model weights; step: "param" | "group" (where Adam's step count lives), None when no step was saved."""

    distributed: bool
    fp32_copy: bool
    step: str | None

    def differs_from(self, other: Layout) -> bool:
        """Whether loading a state saved in this layout into `other` needs mapping (an unknown step: no)."""
        return (self.distributed, self.fp32_copy) != (other.distributed, other.fp32_copy) or (
            self.step is not None and other.step is not None and self.step != other.step)

    def describe(self) -> str:
        if self.distributed:
            return "the distributed optimizer's"
        weights = "bf16 weights with fp32 main copies" if self.fp32_copy else "fp32 weights"
        steps = {"param": "per-parameter Adam steps", "group": "per-group Adam steps", None: "no Adam step"}
        return f"{weights}, {steps[self.step]}"


class LayoutRefused(ValueError):
    """The checkpoint's optimizer state cannot be mapped onto this run's optimizer; `key` is the config key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def step_layout(inner: torch.optim.Optimizer) -> str:
    """Where `inner` (the torch-level optimizer) keeps Adam's step: torch's Adam family per parameter, the fused
    Adams (transformer-engine, apex) per group."""
    return "param" if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) else "group"


def live_layout(optimizer) -> Layout | None:
    """The layout of one of megatron's optimizers (not the chained one, whose inner optimizers have theirs), or
    None for one this module does not map."""
    if isinstance(optimizer, DistributedOptimizer):
        return Layout(True, False, step_layout(optimizer.optimizer))
    if isinstance(optimizer, (FP32Optimizer, Float16OptimizerWithFloat16Params)):
        return Layout(False, isinstance(optimizer, Float16OptimizerWithFloat16Params), step_layout(optimizer.optimizer))
    return None


def saved_layout(optimizer_common) -> Layout | None:
    """A checkpoint's layout, read from the non-tensor part of its optimizer state (None: not one of these)."""
    if not isinstance(optimizer_common, dict):
        return None
    if "param_state_sharding_type" in optimizer_common:
        return Layout(True, False, None)
    fp32_copy = "param_groups" not in optimizer_common and isinstance(optimizer_common.get("optimizer"), dict)
    inner = optimizer_common["optimizer"] if fp32_copy else optimizer_common
    if "param_groups" not in inner:
        return None
    step = "param" if "common_step" in inner.get("state", {}) else (
        "group" if any("step" in group for group in inner["param_groups"]) else None)
    return Layout(False, fp32_copy, step)


class LoadPlan:
    """How to load `optimizer` (and the model chunks' weights) from a checkpoint whose optimizer's non-tensor
    state is `optimizer_common`. Collective use: `request` is the sharded state dict to load ({"model",
    "optimizer"}); after the model's weights are loaded from loaded["model"], `restore(loaded)` finishes.

    megatron's ChainedOptimizer (always the outer optimizer; one inner optimizer per parameter kind, e.g. the MoE
    experts' apart) saves its inner optimizers' states side by side, {i: state} with keys prefixed `chained_i.`,
    or, with one inner optimizer, that one's state as it is; each is mapped on its own."""

    def __init__(self, optimizer, model_sd: dict, optimizer_common, metadata: dict):
        self.optimizer = optimizer
        inner = list(getattr(optimizer, "chained_optimizers", [optimizer]))
        own = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=metadata)
        self.single = len(inner) == 1
        owns = [own] if self.single else [own[i] for i in range(len(inner))]
        commons = [optimizer_common] if self.single else [
            (optimizer_common or {}).get(i) if isinstance(optimizer_common, dict) else None
            for i in range(len(inner))]
        self.parts = [_Part(opt, own_i, common_i, _chained_prefix(own_i, i, self.single))
                      for i, (opt, own_i, common_i) in enumerate(zip(inner, owns, commons))]
        self.fp32_of: dict[int, tuple] = {}  # id(model param) -> path to its exact fp32 value in the loaded state
        sharded_of = _sharded_weights(model_sd)
        for i, part in enumerate(self.parts):
            part.check()
            if part.crosses_precision and part.saved.fp32_copy:  # bf16 checkpoint -> fp32 run
                base = ("optimizer",) if self.single else ("optimizer", i)
                self.fp32_of.update(part.ask_fp32_copies(sharded_of, base))
        if any(part.crosses_precision and not part.saved.fp32_copy for part in self.parts):
            # fp32 checkpoint -> bf16 run: its weights, loaded in fp32, become the main weights
            for param_id, (path, sharded) in sharded_of.items():
                _set_path(model_sd, path, _with_data(sharded, torch.empty_like(sharded.data, dtype=torch.float32)))
                self.fp32_of[param_id] = ("model", *path)
        requests = [part.request for part in self.parts]
        self.request = {"model": model_sd, "optimizer": requests[0] if self.single else dict(enumerate(requests))}

    def restore(self, loaded: dict) -> None:
        """Hand the loaded optimizer state (and, across precisions, the exact fp32 weights) to the optimizer."""
        states = [loaded["optimizer"]] if self.single else [loaded["optimizer"][i] for i in range(len(self.parts))]
        mapped = [part.mapped(state, lambda p: _get_path(loaded, self.fp32_of[id(p)]))
                  for part, state in zip(self.parts, states)]
        self.optimizer.load_state_dict(mapped[0] if self.single else dict(enumerate(mapped)))
        changed = [part for part in self.parts if part.saved and part.live and part.saved.differs_from(part.live)]
        if changed and torch.distributed.get_rank() == 0:
            log.warning("optimizer state mapped from the checkpoint's layout (%s) onto this run's (%s)",
                        changed[0].saved.describe(), changed[0].live.describe())


class _Part:
    """One megatron optimizer (not chained) of the plan: its own load request and how its state is mapped."""

    def __init__(self, optimizer, own: dict, common, prefix: str):
        self.optimizer, self.prefix = optimizer, prefix
        self.live, self.saved = live_layout(optimizer), saved_layout(common)
        self.request = own
        self.crosses_precision = (self.live is not None and self.saved is not None and not self.live.distributed
                                  and not self.saved.distributed and self.live.fp32_copy != self.saved.fp32_copy)
        if self.crosses_precision:
            # Ask in the checkpoint's layout: the moments (same keys in both) at the checkpoint's nesting.
            self.request = own["optimizer"] if self.live.fp32_copy else {"optimizer": own}
        self.fp32_params: list[list[torch.nn.Parameter]] = []

    def check(self) -> None:
        if self.live is None or self.saved is None or self.live.distributed == self.saved.distributed:
            return
        raise LayoutRefused("parallel.distributed_optimizer", (
            f"the checkpoint's optimizer state is in {self.saved.describe()} layout, this run's in "
            f"{self.live.describe()} one: resume with parallel.distributed_optimizer="
            f"{str(self.saved.distributed).lower()}"))

    def ask_fp32_copies(self, sharded_of: dict, base: tuple) -> dict[int, tuple]:
        """bf16 checkpoint -> fp32 run: also ask for the checkpoint's fp32 main weights of this optimizer's
        parameters (this run's weights); returns {id(param): path of its value in the loaded state}."""
        groups = [g["params"] for g in self.optimizer.optimizer.param_groups]
        copies = [[make_sharded_optimizer_tensor(sharded_of[id(p)][1], torch.empty_like(p, dtype=torch.float32),
                                                 prefix=self.prefix + FP32_COPY_PREFIX) for p in group]
                  for group in groups]
        self.request["fp32_from_fp16_params"] = copies
        self.fp32_params = groups
        return {id(p): (*base, "fp32_from_fp16_params", g, i)
                for g, group in enumerate(groups) for i, p in enumerate(group)}

    def mapped(self, state: dict, fp32_value) -> dict:
        """This optimizer's loaded `state` in its own layout. `fp32_value(param)`: a parameter's exact fp32 weight
        from the checkpoint (across precisions)."""
        if self.live is None or self.saved is None:
            return state
        inner = state["optimizer"] if self.saved.fp32_copy or self.saved.distributed else state
        _complete_groups(inner, self.optimizer.optimizer.defaults)
        if self.live.distributed:  # megatron moves the step between Adams itself here
            return state
        if self.saved.step not in (None, self.live.step):  # another Adam wrote it
            _move_step(inner, self.live.step)
        if not self.crosses_precision:
            return state
        if self.live.fp32_copy:  # fp32 checkpoint -> bf16 run
            return {"optimizer": inner, "fp32_from_fp16_params": [
                [fp32_value(p) for p in group] for group in self.optimizer.float16_groups]}
        with torch.no_grad():  # bf16 checkpoint -> fp32 run: the fp32 main weights are this run's weights
            for group in self.fp32_params:
                for p in group:
                    p.copy_(fp32_value(p))
        return inner


def _chained_prefix(own: dict, index: int, single: bool) -> str:
    """The key prefix megatron's ChainedOptimizer gave inner optimizer `index`'s tensors ('' if none)."""
    prefix = f"chained_{index}."
    if single:
        return ""
    keys = [v.key for v in nested_values(own) if isinstance(v, (ShardedTensor, ShardedTensorFactory))]
    return prefix if keys and all(k.startswith(prefix) for k in keys) else ""


def _move_step(inner: dict, live: str) -> None:
    """Move Adam's step count in `inner` (a torch-level optimizer state dict) to the `live` form from the other."""
    if live == "group":  # megatron's common_step (a per-parameter step saved once) -> every group's step
        step = int(inner["state"].pop("common_step"))
        for group in inner["param_groups"]:
            group["step"] = step
    else:  # every group's step -> common_step, which megatron gives every parameter's state on load
        step = max(int(group.pop("step", 0)) for group in inner["param_groups"])
        inner["state"]["common_step"] = torch.tensor(float(step), dtype=torch.float32)


def _complete_groups(inner: dict, defaults: dict) -> None:
    """Give every saved param group the hyperparameters this run's Adam has and the other did not save (torch
    takes the saved group dicts as they are: transformer-engine's FusedAdam would miss `bias_correction`, torch's
    AdamW `decoupled_weight_decay`). Shared ones (lr, betas, eps, weight decay) keep their saved values."""
    for group in inner["param_groups"]:
        for key, value in defaults.items():
            group.setdefault(key, value)


def _sharded_weights(model_sd: dict) -> dict[int, tuple[tuple, ShardedTensor | ShardedTensorFactory]]:
    """{id(parameter): (path in model_sd, its ShardedTensor or factory)}: megatron's entries hold the parameter
    itself as `data`."""
    found = {}

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, (ShardedTensor, ShardedTensorFactory)) and isinstance(node.data, torch.nn.Parameter):
            found[id(node.data)] = (path, node)

    walk(model_sd, ())
    return found


def _with_data(sharded, data: torch.Tensor):
    if isinstance(sharded, ShardedTensorFactory):
        return replace(sharded, data=data)
    return replace(sharded, data=data, dtype=data.dtype)


def _set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _get_path(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


