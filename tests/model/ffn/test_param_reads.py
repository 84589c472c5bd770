"""Every parameter is read only after a forward pre-hook of the module that owns it ran in this forward pass.

megatron's DDP with parallel.overlap_param_gather (and the distributed optimizer) waits for a parameter's
all-gather in a forward pre-hook of the module owning it; a weight read before any such hook ran may be stale
(another DP rank's update not yet arrived). Here every module gets a pre-hook that marks it gathered, as
megatron's does, and every torch call that takes a parameter checks that its owner was marked."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests import tiny_model
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.gpt import build_model
from vffn_pretrain.parallel.config import ParallelConfig


class ParamReads(TorchFunctionMode):
    """Records (parameter name, torch function) for each read of a parameter whose owner was not yet gathered."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.owner, self.name = {}, {}
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                self.owner[param] = module
                self.name[param] = f"{module_name}.{param_name}"
        self.gathered: set[torch.nn.Module] = set()
        self.stale: list[tuple[str, str]] = []
        self.handles = [m.register_forward_pre_hook(lambda m, args: self.gathered.add(m))
                        for m in model.modules()]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for a in [*args, *(kwargs or {}).values()]:
            if isinstance(a, torch.nn.Parameter) and self.owner.get(a) not in self.gathered:
                self.stale.append((self.name.get(a, "?"), getattr(func, "__name__", str(func))))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ffn", [dict(kind="versatile", token_sparse_recursion=True),
                                 dict(kind="versatile", token_sparse_recursion=False),
                                 dict(kind="depth_only"), dict(kind="width_only"), dict(kind="kloop", loops=2)],
                         ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_no_parameter_is_read_before_its_owners_pre_hook(single_rank, ffn):
    (gpt,) = build_model(ModelConfig(**tiny_model.FFN_GPT), FFNConfig(**ffn), ParallelConfig())
    state.set_training_step([gpt], 0, 10)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand(2, 16)
    for training in (True, False):
        gpt.train(training)
        reads = ParamReads(gpt)
        try:
            with torch.set_grad_enabled(training), reads:
                out = gpt(input_ids=tokens, position_ids=positions, attention_mask=None, labels=tokens)
            if training:
                out.sum().backward()
        finally:
            for handle in reads.handles:
                handle.remove()
        assert reads.stale == [], ("train" if training else "eval", reads.stale)
