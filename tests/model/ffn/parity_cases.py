"""Case functions run on every rank of a RankPool (module level so they pickle), or in-process at TP=1.

Each sets up its own model parallelism, returns plain floats / lists, and leaves parallel state destroyed.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from tests import tiny_model
from tests.model.ffn.tiny_layers import (
    LAYER,
    SEED,
    make_ffn,
    max_err,
    module_grads,
    ref_weights,
    seq_gather,
    seq_shard,
)
from vffn_pretrain.model import noise
from vffn_pretrain.model.ffn import state
from vffn_pretrain.testing.ffn_reference import reference

S, B = 8, 2  # sequence length (divisible by TP) and micro-batch size


def _inputs(d: int):
    gen = torch.Generator().manual_seed(99)
    h = torch.randn(S, B, d, generator=gen)
    g = torch.randn(S, B, d, generator=gen)
    return h, g


def parity(kind: str, tp: int = 1, sp: bool = False, training: bool = True, balance_coeff: float = 0.0,
           tau: float = 0.7, setup: bool = True, **ffn_kw) -> dict:
    """The module against the float64 reference: forward output, input grad and every parameter grad
    (training), or the eval output; plus the loop histogram the module recorded. Returns {name: (err, scale)}
    and the histograms."""
    mod = make_ffn(kind, tp, sp, setup=setup, balance_loss=balance_coeff > 0, balance_coeff=balance_coeff,
                   **ffn_kw)
    mod.train(training)
    mod.tau = tau
    sp_active = sp and tp > 1
    h_full, g_full = _inputs(mod.config.hidden_size)
    h_local = (seq_shard(h_full) if sp_active else h_full).clone().requires_grad_(training)
    noise.seed_microbatch(SEED, (5, 1))
    y, bias = mod(h_local)
    assert bias is None
    if training:
        (y * (seq_shard(g_full) if sp_active else g_full)).sum().backward()
    y_full = seq_gather(y.detach()) if sp_active else y.detach()

    L = mod.max_loops
    noise.seed_microbatch(SEED, (5, 1))
    g_noise = noise.gumbel_noise((S, B, L), LAYER, torch.device("cpu")).reshape(S * B, L).double()
    wt = ref_weights(mod)
    H64 = h_full.double().reshape(S * B, -1).requires_grad_(True)
    cfg = mod.ffn_cfg
    Y, aux, loops, took_width = reference(
        H64, wt, kind=kind, num_experts=cfg.num_experts, top_k=cfg.top_k, max_loops=cfg.max_loops,
        loops=cfg.loops, noise=g_noise, tau=tau, training=training, balance_coeff=balance_coeff)
    out = {"y": max_err(y_full.reshape(S * B, -1), Y.detach())}
    if training:
        ((Y * g_full.double().reshape(S * B, -1)).sum() + aux).backward()
        grad_h = seq_gather(h_local.grad) if sp_active else h_local.grad
        out["grad_h"] = max_err(grad_h.reshape(S * B, -1), H64.grad)
        grads = module_grads(mod)
        for name, ref in (("w1", wt.w1), ("w2", wt.w2), ("norm", wt.norm), ("router", wt.router),
                          ("loop_head", wt.loop_head)):
            if ref is not None:
                out[name] = max_err(grads[name], ref.grad)
    stats = state.reduce_stats(state.collect_stats([mod]))
    out["hist"] = stats[LAYER]["loop_hist"]
    out["ref_hist"] = torch.bincount(loops - 1, minlength=L).tolist()
    out["width_tokens"] = mod.last_width_tokens if not training else None
    out["ref_width_tokens"] = int(took_width.sum())
    out["loop_work"] = list(mod.last_loop_work) if not training else None
    out["ref_loop_work"] = [int((loops >= i).sum()) for i in range(1, L + 1)]
    if setup:
        ps.destroy_model_parallel()
    return out


def tp2_parity_suite() -> dict:
    """The TP=2 layouts (with and without sequence parallelism), one call on a 2-rank pool."""
    runs = {
        "versatile": dict(kind="versatile", balance_coeff=0.05),
        "versatile_sp": dict(kind="versatile", sp=True, balance_coeff=0.05),
        "versatile_eval_sp": dict(kind="versatile", sp=True, training=False),
        "versatile_eval": dict(kind="versatile", training=False),
        "depth_only_sp": dict(kind="depth_only", sp=True),
        "width_only_sp": dict(kind="width_only", sp=True, balance_coeff=0.05),
        "kloop_sp": dict(kind="kloop", sp=True, loops=3),
        # N=4 experts over 2 ranks of 64 units: whole experts per rank; N=16: 8 per rank; N=2 with TP=2:
        # one expert per rank. num_experts=8, tp=2 is the default above.
        "versatile_n2": dict(kind="versatile", num_experts=2, top_k=1, balance_coeff=0.05),
    }
    return {name: parity(tp=2, **kw) for name, kw in runs.items()}


def analytic_balance_grad(x: torch.Tensor, weight: torch.Tensor, top_k: int, alpha: float) -> torch.Tensor:
    """d/dW of alpha * N * sum_e f_e * sum_t softmax(W x_t)_e with f fixed (the token-weighted Switch term
    alpha * L_bal * T), written out: dlogits_t = s_t ⊙ (f - <s_t, f>). x [T, d], W [N, d] -> [N, d] float64."""
    x, weight = x.double(), weight.double()
    logits = x @ weight.T
    n = weight.shape[0]
    s = torch.softmax(logits, -1)
    top = torch.topk(logits, top_k, dim=-1).indices
    f = torch.nn.functional.one_hot(top, n).sum((0, 1)).double() / (x.shape[0] * top_k)
    dlogits = s * (f - (s * f).sum(-1, keepdim=True))
    return alpha * n * dlogits.T @ x


def switch_value(x: torch.Tensor, weight: torch.Tensor, top_k: int) -> float:
    """L_bal = N * sum_e f_e * P_e over the tokens x [T, d]."""
    logits = x.double() @ weight.double().T
    n = weight.shape[0]
    top = torch.topk(logits, top_k, dim=-1).indices
    f = torch.nn.functional.one_hot(top, n).sum((0, 1)).double() / (x.shape[0] * top_k)
    return float(n * (f * torch.softmax(logits, -1).mean(0)).sum())


def dp_balance_case() -> dict:
    """TP=1, DP=2, each rank its own tokens: the balance statistics are global (all-reduced over DP), so the
    router gradients summed over DP (what DDP does) equal the analytic gradient over all tokens, and
    reduce_stats gives the global token count, expert load and L_bal."""
    import torch.distributed as dist

    alpha = 1.0
    mod = make_ffn("versatile", tp=1, balance_loss=True, balance_coeff=alpha)
    mod.train()
    rank = dist.get_rank()
    h = torch.randn(S, B, mod.config.hidden_size, generator=torch.Generator().manual_seed(100 + rank))
    noise.seed_microbatch(SEED, (0, rank))
    y, _ = mod(h)
    (y * 0).sum().backward()  # only the balance term reaches the router
    grad = mod.router.weight.grad.clone()
    dist.all_reduce(grad)
    parts = [torch.empty_like(h) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, h)
    x_all = torch.cat(parts).reshape(-1, h.shape[-1])
    expected = analytic_balance_grad(x_all, mod.router.weight.detach(), mod.ffn_cfg.top_k, alpha)
    stats = state.reduce_stats(state.collect_stats([mod]))[LAYER]
    logits = x_all.double() @ mod.router.weight.detach().double().T
    top = torch.topk(logits, mod.ffn_cfg.top_k, dim=-1).indices
    load = (torch.nn.functional.one_hot(top, mod.num_experts).sum((0, 1)).double() / top.numel()).tolist()
    out = {
        "grad": max_err(grad, expected),
        "tokens": stats["tokens"],
        "expert_load": max(abs(a - b) for a, b in zip(stats["expert_load"], load)),
        "balance": (stats["balance_loss"], switch_value(x_all, mod.router.weight.detach(), mod.ffn_cfg.top_k)),
    }
    ps.destroy_model_parallel()
    return out


# ---- whole-model cases: checkpoint resharding, expert parallelism ------------------------------------------------

TINY_GPT = tiny_model.FFN_GPT  # vocabulary padded alike at TP 1 and 2


def _gpt(kind: str, tp: int = 1, sp: bool = False, ep: int = 1, seed: int = SEED, **ffn_kw):
    from vffn_pretrain.model.config import ModelConfig
    from vffn_pretrain.model.ffn.config import FFNConfig
    from vffn_pretrain.model.gpt import build_model
    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import seed_all, setup_model_parallel

    parallel = ParallelConfig(tp=tp, sp=sp, ep=ep)
    setup_model_parallel(parallel)
    seed_all(seed)
    return build_model(ModelConfig(**TINY_GPT), FFNConfig(kind=kind, **ffn_kw), parallel)[0]


def _full_logits(model, training: bool = False) -> torch.Tensor:
    """Logits [b, s, V] for fixed tokens, gathered over the vocabulary-parallel TP shards."""
    import torch.distributed as dist

    model.train(training)
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, TINY_GPT["vocab_size"], (2, 8), generator=gen)
    pos = torch.arange(8).expand(2, 8)
    noise.seed_microbatch(SEED, (3, 0))
    with torch.no_grad():
        logits = model(tokens, pos, None)
    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(logits) for _ in range(tp)]
        dist.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
        logits = torch.cat(parts, -1)
    return logits


def _scale_heads(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("mlp.router.weight", "mlp.loop_head.weight")):
                p.mul_(40.0)  # decisive routing, so a wrongly loaded head would change the outputs


def reshard_case(directory: str) -> dict:
    """Save a versatile GPT at TP=2, load it at TP=1, save that, load it back at TP=2 (fresh weights each
    time): eval and train-mode logits (same noise) must match the original."""
    from megatron.core import dist_checkpointing

    kind = "versatile"
    model = _gpt(kind, tp=2)
    _scale_heads(model)
    ref_eval, ref_train = _full_logits(model), _full_logits(model, training=True)
    dist_checkpointing.save(model.sharded_state_dict(), f"{directory}/tp2")

    def load(tp, path, seed):
        m = _gpt(kind, tp=tp, seed=seed)
        m.load_state_dict(dist_checkpointing.load(m.sharded_state_dict(), path))
        return m

    out = {}
    m1 = load(1, f"{directory}/tp2", seed=11)
    out["tp2->tp1"] = (max_err(_full_logits(m1), ref_eval)[0], max_err(_full_logits(m1, True), ref_train)[0])
    dist_checkpointing.save(m1.sharded_state_dict(), f"{directory}/tp1")
    m2 = load(2, f"{directory}/tp1", seed=12)
    out["tp1->tp2"] = (max_err(_full_logits(m2), ref_eval)[0], max_err(_full_logits(m2, True), ref_train)[0])
    out["scale"] = float(ref_eval.abs().max())
    ps.destroy_model_parallel()
    return out


def ep_case() -> dict:
    """The MoE baseline with expert parallelism 2 (each rank holds 4 of the 8 experts) equals EP=1 with the same
    weights: the same outputs for the same tokens; each expert's weight gradient is that of EP=1 summed over the
    two ranks (both feed the same tokens here, and the all-gather dispatcher brings them to the expert)."""
    import torch.distributed as dist

    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, TINY_GPT["vocab_size"], (2, 8), generator=gen)
    pos = torch.arange(8).expand(2, 8)

    def fwd_bwd(model):
        model.train()
        noise.seed_microbatch(SEED, (0, 0))
        loss = model(tokens, pos, None, labels=tokens)
        loss.sum().backward()
        return loss.detach()

    ref = _gpt("moe", ep=1)
    ref_sd = {k: v.clone() if torch.is_tensor(v) else v for k, v in ref.state_dict().items()}
    ref_loss = fwd_bwd(ref)
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}

    model = _gpt("moe", ep=2, seed=99)
    ep_rank, per_rank = ps.get_expert_model_parallel_rank(), 8 // 2
    sd = {}
    for key in model.state_dict():
        src = key
        if ".local_experts." in key:
            head, tail = key.split(".local_experts.")
            local, rest = tail.split(".", 1)
            src = f"{head}.local_experts.{ep_rank * per_rank + int(local)}.{rest}"
        sd[key] = ref_sd[src]
    model.load_state_dict(sd)
    loss = fwd_bwd(model)
    expert_err, other_err = 0.0, 0.0
    for name, p in model.named_parameters():
        if ".local_experts." in name:
            head, tail = name.split(".local_experts.")
            local, rest = tail.split(".", 1)
            ref_g = ref_grads[f"{head}.local_experts.{ep_rank * per_rank + int(local)}.{rest}"]
            expert_err = max(expert_err, max_err(p.grad, 2 * ref_g)[0])
        else:
            other_err = max(other_err, max_err(p.grad, ref_grads[name])[0])
    out = {"loss": max_err(loss, ref_loss), "expert_grad": expert_err, "other_grad": other_err,
           "ep": ps.get_expert_model_parallel_world_size(), "rank": dist.get_rank()}
    ps.destroy_model_parallel()
    return out


def pp_case(directory: str) -> dict:
    """A versatile GPT at PP=2 (weights loaded from the PP=1 model) gives the PP=1 training-mode loss: the Gumbel
    noise is keyed by the global layer number and micro-batch, not by the stage or the DP rank."""
    from megatron.core import dist_checkpointing

    from vffn_pretrain.testing.batches import split_global_batch, synthetic_global_batch
    from vffn_pretrain.training.step import train_step

    def loss_of(model):
        model.train()
        batch = synthetic_global_batch(SEED, 3, 4, 8, TINY_GPT["vocab_size"])
        micro = split_global_batch(batch, step=3, dp_rank=ps.get_data_parallel_rank(),
                                   dp_size=ps.get_data_parallel_world_size(), micro_batch_size=1)
        with torch.no_grad():
            return train_step([model], None, micro, seq_length=8, micro_batch_size=1, noise_seed=SEED,
                              forward_only=True).loss

    ref = _gpt("versatile")
    _scale_heads(ref)
    ref_loss = loss_of(ref)
    dist_checkpointing.save(ref.sharded_state_dict(), directory)
    from vffn_pretrain.model.config import ModelConfig
    from vffn_pretrain.model.ffn.config import FFNConfig
    from vffn_pretrain.model.gpt import build_model
    from vffn_pretrain.parallel.config import ParallelConfig
    from vffn_pretrain.parallel.init import seed_all, setup_model_parallel

    parallel = ParallelConfig(pp=2)
    setup_model_parallel(parallel)
    seed_all(5)
    model = build_model(ModelConfig(**TINY_GPT), FFNConfig(kind="versatile"), parallel)[0]
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), directory))
    out = {"pp1": ref_loss, "pp2": loss_of(model),
           "layers": sorted(m.layer_number for m in state.ffn_modules(model))}
    ps.destroy_model_parallel()
    return out
