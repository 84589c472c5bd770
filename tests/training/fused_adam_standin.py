"""A CPU stand-in for transformer-engine's FusedAdam, with its state layout and load contract (as read from its
source; no code of it is here): the step count lives in each param group (`group["step"]`, an int), a parameter's
state holds only `exp_avg` and `exp_avg_sq`, and `load_state_dict` rebuilds every saved state entry through a
name -> dtype table, so an entry of any other name (a per-parameter `step`) is a KeyError. The update is AdamW's.

`installed()` makes megatron-core's get_megatron_optimizer build it where it would build TE's FusedAdam."""

from __future__ import annotations

import contextlib

import torch


class GroupStepAdam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 bias_correction=True, adam_w_mode=True):
        super().__init__(params, dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps,
                                      weight_decay=weight_decay))
        self.adam_w_mode = adam_w_mode
        self.name_to_dtype = {"exp_avg": torch.float32, "exp_avg_sq": torch.float32}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for name in list(state):
                state[name] = state[name].to(self.name_to_dtype[name])  # KeyError for a name it does not keep

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if not group["params"]:
                continue
            group["step"] = group.get("step", 0) + 1
            (beta1, beta2), t = group["betas"], group["step"]
            c1 = 1 - beta1 ** t if group["bias_correction"] else 1.0
            c2 = 1 - beta2 ** t if group["bias_correction"] else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                if self.adam_w_mode and group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / c2).sqrt_().add_(group["eps"])
                p.addcdiv_(state["exp_avg"] / c1, denom, value=-group["lr"])


@contextlib.contextmanager
def installed():
    """While active, megatron-core builds GroupStepAdam where it would build transformer-engine's FusedAdam."""
    import megatron.core.optimizer as moptim

    before = moptim.Adam, moptim.USING_PYTORCH_OPTIMIZER
    moptim.Adam, moptim.USING_PYTORCH_OPTIMIZER = GroupStepAdam, False
    try:
        yield
    finally:
        moptim.Adam, moptim.USING_PYTORCH_OPTIMIZER = before
