"""One FFN layer of any kind, on this process's device and in fp32 or bf16, against the float64 reference.

This is the correctness step of benchmarks/gpu_check.py: the layer is built by the same spec the trainer uses
(transformer-engine's linear layers and norm on a GPU that has it), run forward (+ backward in training) on the
device, and compared with `ffn_reference.reference` evaluated in float64 on the CPU from the layer's own weights,
input and Gumbel noise. The tests compare the module with the reference at every TP/SP layout on CPU
(tests/model/ffn/); this is the TP=1 comparison, made where the kernels differ.

Per kind: the VersatileFFN family (versatile, depth_only, width_only, kloop) against the reference of that kind;
dense as the reference's one-loop FFN (pre-norm, SwiGLU, residual); moe, megatron-core's MoE layer, which the
reference does not model, against a float64 copy of itself built with megatron's local modules (transformer-engine
has no float64), on the layer's device (float64 products are exact there too: TF32 applies to fp32 only).

Errors are ||layer - reference|| / ||reference|| per compared tensor (output, input gradient, each
parameter gradient). Routing and loop decisions depend only on the layer input: the heads' logits are
accumulated in float64 (functional.router_logits), from the same values the reference sees, so neither bf16 nor
TF32 flips a decision and only the values carry rounding. The tolerance follows the precision the matrix products
really run in (`gemm_precision`): fp32, TF32 (10-bit mantissa: transformer-engine runs every fp32 GEMM in it, and
on NGC images torch does too) or bf16.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from vffn_pretrain.model import noise
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.kinds import FFN_KINDS, SHARED_WEIGHT_KINDS, traits
from vffn_pretrain.testing.ffn_reference import RefWeights, reference

# ||layer - reference|| / ||reference|| per tensor: 8 units of roundoff of the format the products run in (bf16:
# measured <= 6e-3 on CPU through up to L_max loops; TF32: <= 5e-4 measured under tests' TF32 emulation), and at
# least 1e-4 (fp32: measured <= 6e-5 on CPU, the loop head's gradient, a difference of nearby loop states, being
# the worst). A wrong or missing term shows up at 0.1 and above; an off-by-one in lambda at about 0.05.
MANTISSA_BITS = {"fp32": 23, "tf32": 10, "bf16": 7}
ROUNDOFF_UNITS = 8
FLOOR = 1e-4


def tolerance(precision: str) -> float:
    """The relative error allowed for a layer whose matrix products run in `precision` (fp32 | tf32 | bf16)."""
    return max(FLOOR, ROUNDOFF_UNITS * 2.0 ** -(MANTISSA_BITS[precision] + 1))


def gemm_precision(dtype: torch.dtype, device: torch.device, backend: str) -> str:
    """The format a layer's matrix products really use: bf16 for bf16 layers; for fp32 layers on a GPU, TF32 when
    transformer-engine runs them (it always uses TF32 for fp32 GEMMs) or torch is allowed or forced to (NGC
    images set TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1, which allow_tf32=False does not undo); else fp32."""
    if dtype == torch.bfloat16:
        return "bf16"
    if torch.device(device).type != "cuda":
        return "fp32"
    tf32 = (backend == "te" or torch.backends.cuda.matmul.allow_tf32
            or torch.get_float32_matmul_precision() != "highest"
            or os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1")
    return "tf32" if tf32 else "fp32"


# Except the loop head's gradient in bf16: its straight-through term <g, H^(j)> weighs differences between
# successive loop states, which are small next to the bf16 rounding of each state (measured 0.2-0.4 on CPU at
# d=64). Held only to "no sign error, no missing term".
BF16_LOOP_HEAD_TOLERANCE = 0.6
HEAD_SCALE = 40.0  # router / loop-head weights scaled up so decisions are clear-cut, as in tests/model/ffn/
REFERENCE_KINDS = SHARED_WEIGHT_KINDS  # the kinds testing.ffn_reference computes


def variants() -> list[dict]:
    """The (kind, FFNConfig keywords) cases: every kind; with `token_sparse_recursion` on and off for the kinds
    that sample loops, where FFNConfig has that key."""
    has_sparse = "token_sparse_recursion" in {f.name for f in dataclasses.fields(FFNConfig)}
    out = []
    for kind in FFN_KINDS:
        t = traits(kind)
        kw = {"balance_coeff": 0.05} if t.width_path else {}
        if t.fixed_loops:
            kw["loops"] = 3
        if has_sparse and t.adaptive_depth:
            out += [(kind, dict(kw, token_sparse_recursion=flag)) for flag in (False, True)]
        else:
            out.append((kind, kw))
    return out


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().cpu().to(torch.float64).clone().requires_grad_(True)


def _reference_weights(block) -> RefWeights:
    """The layer's weights in the reference's layout (megatron's: fc1 = [gate ; up]), float64 CPU leaves."""
    mlp = block.mlp
    own_norm = getattr(mlp, "norm", None)
    return RefWeights(
        w1=_leaf(mlp.linear_fc1.weight), w2=_leaf(mlp.linear_fc2.weight),
        norm=_leaf((own_norm if own_norm is not None else block.norm).weight),
        router=_leaf(mlp.router.weight) if hasattr(mlp, "router") else None,
        loop_head=_leaf(mlp.loop_head.weight) if hasattr(mlp, "loop_head") else None,
        eps=mlp.config.layernorm_epsilon)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare(build_block, kind: str, ffn_kw: dict, *, dtype: torch.dtype, training: bool, d: int = 64,
            d_ff: int = 256, seq: int = 16, batch: int = 2, tau: float = 5.0, seed: int = 1234,
            precision: str | None = None) -> dict:
    """Build one layer with `build_block(FFNConfig, d, d_ff, dtype, backend=...)` (benchmarks/ffn_layer.py's, on
    the GPU when there is one; the block's `backend_name` says which backend it got), run it and the reference,
    and return {"errors": {tensor: relative error}, "limits": {tensor: tolerance}, "max_error", "failed":
    [tensors over their limit], "ok", "precision"}. `precision` (fp32 | tf32 | bf16): the format the products
    run in, by default `gemm_precision`'s. Needs model parallelism set up (TP=1)."""
    from vffn_pretrain.parallel.init import seed_all

    cfg = FFNConfig(kind=kind, **ffn_kw)
    seed_all(seed)
    block = build_block(cfg, d, d_ff, dtype, backend="auto")
    mlp = block.mlp
    with torch.no_grad():
        for name in ("router", "loop_head"):
            if hasattr(mlp, name) and not traits(kind).moe:
                getattr(mlp, name).weight.mul_(HEAD_SCALE)
        norm = getattr(mlp, "norm", None) or block.norm
        norm.weight.copy_(1 + 0.1 * torch.randn(d, generator=torch.Generator().manual_seed(7)))
    if hasattr(mlp, "tau"):
        mlp.tau = tau
    device = next(block.parameters()).device
    gen = torch.Generator().manual_seed(99)
    h = torch.randn(seq, batch, d, generator=gen).to(dtype)
    g = torch.randn(seq, batch, d, generator=gen).to(dtype)

    block.train(training)
    x = h.to(device, copy=True).requires_grad_(training)
    noise.seed_microbatch(seed, (5, 1))
    with torch.set_grad_enabled(training):
        y = block(x)
    if training:
        (y * g.to(device)).sum().backward()
    got = {"output": y}
    if training:
        got["grad_input"] = x.grad
        got.update({f"grad {n}": p.grad for n, p in block.named_parameters() if p.grad is not None})

    if traits(kind).moe:
        want = _moe_float64(build_block(cfg, d, d_ff, torch.float64, backend="local"), block, h, g, training)
    else:
        want = _reference_outputs(block, kind, cfg, h, g, training, tau, seed, device)
    precision = precision or gemm_precision(dtype, device, getattr(block, "backend_name", "local"))
    errors = {name: _rel(got[name], want[name]) for name in want}
    limits = {name: BF16_LOOP_HEAD_TOLERANCE if precision == "bf16" and "loop_head" in name else tolerance(precision)
              for name in errors}
    failed = sorted(name for name in errors if not errors[name] <= limits[name])
    return {"errors": errors, "limits": limits, "max_error": max(errors.values()), "failed": failed,
            "ok": not failed, "precision": precision}


def _reference_outputs(block, kind, cfg, h, g, training, tau, seed, device) -> dict:
    mlp = block.mlp
    wt = _reference_weights(block)
    T, d = h.shape[0] * h.shape[1], h.shape[2]
    H = h.double().reshape(T, d).requires_grad_(True)
    gumbel = None
    if traits(kind).adaptive_depth:
        noise.seed_microbatch(seed, (5, 1))
        gumbel = noise.gumbel_noise((h.shape[0], h.shape[1], cfg.max_loops), mlp.layer_number, device)
        gumbel = gumbel.cpu().double().reshape(T, -1)
    ref_kind, loops = (("kloop", 1) if traits(kind).plain else (kind, cfg.loops))  # dense = one loop of k-loop
    balance = cfg.balance_coeff if cfg.balance_loss and traits(kind).width_path else 0.0
    Y, aux, _, _ = reference(H, wt, kind=ref_kind, num_experts=cfg.num_experts, top_k=cfg.top_k,
                             max_loops=cfg.max_loops, loops=loops, noise=gumbel, tau=tau, training=training,
                             balance_coeff=balance)
    out = {"output": Y.reshape(h.shape)}
    if not training:
        return out
    ((Y * g.double().reshape(T, d)).sum() + aux).backward()
    out["grad_input"] = H.grad.reshape(h.shape)
    own_norm = getattr(mlp, "norm", None) is not None
    names = {"w1": "mlp.linear_fc1.weight", "w2": "mlp.linear_fc2.weight",
             "norm": "mlp.norm.weight" if own_norm else "norm.weight",
             "router": "mlp.router.weight", "loop_head": "mlp.loop_head.weight"}
    for field, name in names.items():
        ref = getattr(wt, field)
        if ref is not None:
            out[f"grad {name}"] = ref.grad
    return out


def _moe_float64(ref, block, h, g, training) -> dict:
    """`ref`, a float64 build of the same MoE layer on the local backend, run with `block`'s weights."""
    if getattr(ref, "backend_name", "local") != "local":
        raise ValueError(f"the float64 reference must be built on the local backend, got {ref.backend_name}")
    _copy_parameters(block, ref)
    ref.train(training)
    x = h.to(next(ref.parameters()).device, torch.float64).requires_grad_(training)
    with torch.set_grad_enabled(training):
        y = ref(x)
    out = {"output": y}
    if training:
        (y * g.to(y)).sum().backward()
        out["grad_input"] = x.grad
        out.update({f"grad {n}": p.grad for n, p in ref.named_parameters() if p.grad is not None})
    return out


def _copy_parameters(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """dst's parameters set to src's, by name (the same layer built on another backend or in another dtype)."""
    theirs, mine = dict(src.named_parameters()), dict(dst.named_parameters())
    if theirs.keys() != mine.keys():
        raise ValueError(f"the reference's parameters differ from the layer's: {sorted(theirs.keys() ^ mine.keys())}")
    with torch.no_grad():
        for name, param in mine.items():
            param.copy_(theirs[name])
