"""Token-sparse recursion (ffn.token_sparse_recursion) computes what the all-token path computes: the same output,
input gradient and parameter gradients, for any sampled loop counts, at TP=1 and TP=2 (the all-token path itself
is checked against the float64 reference in test_reference_parity). It also keeps less for the backward pass:
a token's loops past its own count, and the width path of tokens at L_max, store no activations."""

from __future__ import annotations

import pytest
import torch
from megatron.core import parallel_state as ps

from tests.model.ffn.tiny_layers import D, make_ffn, module_grads
from vffn_pretrain.model import noise
from vffn_pretrain.model.config import ModelConfig
from vffn_pretrain.model.ffn import state
from vffn_pretrain.model.ffn.config import FFNConfig
from vffn_pretrain.model.ffn.functional import router_logits
from vffn_pretrain.parallel.config import ParallelConfig
from vffn_pretrain.parallel.init import setup_model_parallel

S, B, L = 8, 4, 4
PATTERNS = ("mixed", "all_one", "all_max")


def loop_counts(pattern: str) -> torch.Tensor:
    """[S, B] sampled loop counts in 1..L."""
    if pattern == "all_one":
        return torch.ones(S, B, dtype=torch.int64)
    if pattern == "all_max":
        return torch.full((S, B), L, dtype=torch.int64)
    counts = torch.randint(1, L + 1, (S, B), generator=torch.Generator().manual_seed(5))
    counts[0, 0], counts[1, 0] = 1, L  # both ends present
    return counts


def run_module(kind: str, token_sparse: bool, pattern: str, tp: int = 1, dtype=torch.float32) -> dict:
    """Forward + backward of one module whose Gumbel noise is replaced by noise that makes the sampled counts
    `pattern` (soft probabilities stay away from one-hot, so the loop head gets a real gradient)."""
    mod = make_ffn(kind, tp, setup=False, dtype=dtype, token_sparse_recursion=token_sparse,
                   balance_loss=kind == "versatile", balance_coeff=0.05, max_loops=L)
    mod.train()
    mod.tau = 2.0
    gen = torch.Generator().manual_seed(21)
    h = torch.randn(S, B, D, generator=gen).to(dtype).requires_grad_(True)
    g_out = torch.randn(S, B, D, generator=gen).to(dtype)
    logits = router_logits(h.detach(), mod.loop_head.weight)
    target = torch.nn.functional.one_hot(loop_counts(pattern) - 1, L).to(torch.float32)
    mod._noise = lambda hidden: -logits + 1.5 * target
    noise.seed_microbatch(1, (0, 0))
    y, _ = mod(h)
    (y * g_out).sum().backward()
    stats = state.collect_stats([mod])[mod.layer_number]
    return {"y": y.detach().double(), "grad_h": h.grad.double(), **module_grads(mod),
            "hist": stats["loop_hist"], "graph_fraction": stats["graph_work_fraction"]}


def compare(kind: str, pattern: str, tp: int, dtype) -> dict:
    """{tensor name: max |sparse - all-token| / max |all-token|}, plus the sparse run's statistics."""
    ref = run_module(kind, False, pattern, tp, dtype)
    got = run_module(kind, True, pattern, tp, dtype)
    errors = {name: float((got[name] - ref[name]).abs().max() / ref[name].abs().max().clamp_min(1e-30))
              for name in ref if isinstance(ref[name], torch.Tensor)}
    return {"errors": errors, "hist": got["hist"], "ref_hist": ref["hist"],
            "graph_fraction": got["graph_fraction"], "ref_graph_fraction": ref["graph_fraction"]}


def tp2_suite() -> dict:
    """Every kind x pattern at TP=2 in fp64 and fp32 (one call on a 2-rank pool)."""
    setup_model_parallel(ParallelConfig(tp=2))
    out = {(kind, pattern, str(dtype)): compare(kind, pattern, 2, dtype)
           for kind in ("versatile", "depth_only") for pattern in PATTERNS
           for dtype in (torch.float64, torch.float32)}
    ps.destroy_model_parallel()
    return out


TOLERANCE = {torch.float64: 1e-6, torch.float32: 2e-5}


def check(result: dict, pattern: str, dtype) -> None:
    for name, err in result["errors"].items():
        assert err <= TOLERANCE[dtype], (name, err)
    assert result["hist"] == result["ref_hist"]
    counts = loop_counts(pattern)
    assert result["hist"] == torch.bincount(counts.flatten() - 1, minlength=L).tolist()
    # the row-loops that kept a graph: each token's own loops out of L_max each
    assert result["graph_fraction"] == pytest.approx(float(counts.sum()) / (counts.numel() * L))
    assert result["ref_graph_fraction"] == 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("kind", ["versatile", "depth_only"])
def test_matches_all_token_path_tp1(single_rank, kind, pattern, dtype):
    check(compare(kind, pattern, 1, dtype), pattern, dtype)


def test_matches_all_token_path_tp2(rank_pools):
    results = rank_pools(2).run(tp2_suite)
    for rank_result in results:
        for (_kind, pattern, dtype_name), result in rank_result.items():
            check(result, pattern, getattr(torch, dtype_name.split(".")[1]))


def saved_bytes(kind: str, token_sparse: bool, pattern: str) -> int:
    """Bytes of the distinct activation tensors (parameters aside) autograd keeps for the backward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run_module(kind, token_sparse, pattern)
    return sum(storages.values())


def test_stores_less_for_the_backward_pass(single_rank):
    full = saved_bytes("versatile", False, "all_one")
    one = saved_bytes("versatile", True, "all_one")
    mixed = saved_bytes("versatile", True, "mixed")
    deepest = saved_bytes("versatile", True, "all_max")
    # one loop with a graph out of four: well under half of the all-token path's activations
    assert one < 0.5 * full, (one, full)
    assert one < mixed < 0.8 * full, (mixed, full)
    # every token at L_max: every loop keeps its graph, only the width path's is dropped
    assert deepest <= full


def test_forced_loops_and_kloop_keep_the_all_token_path(single_rank):
    mod = make_ffn("versatile", setup=False)
    mod.train()
    state.set_inference_overrides([mod], force_loops=2)
    h = torch.randn(S, B, D, requires_grad=True)
    noise.seed_microbatch(1, (0, 0))
    mod(h)[0].sum().backward()
    assert state.collect_stats([mod])[mod.layer_number]["graph_work_fraction"] == 1.0


def test_sequence_parallel_falls_back_with_one_line(monkeypatch):
    from vffn_pretrain.model.ffn import versatile

    lines = []
    # the module's logger itself: the trainer's logging set-up may stop propagation to the root logger
    monkeypatch.setattr(versatile.log, "warning", lambda msg, *args: lines.append(msg % args if args else msg))
    model = ModelConfig(num_layers=1, hidden_size=D, ffn_hidden_size=128, num_attention_heads=4, vocab_size=128)
    versatile.validate_shared_weight_kind(FFNConfig(kind="versatile"), model, ParallelConfig(tp=2, sp=True))
    assert len(lines) == 1 and "ffn.token_sparse_recursion" in lines[0] and "parallel.sp" in lines[0]
    versatile.validate_shared_weight_kind(FFNConfig(kind="versatile"), model, ParallelConfig(tp=2, sp=False))
    versatile.validate_shared_weight_kind(FFNConfig(kind="versatile", token_sparse_recursion=False), model,
                                          ParallelConfig(tp=2, sp=True))
    assert len(lines) == 1


def sp_module_is_all_token() -> bool:
    setup_model_parallel(ParallelConfig(tp=2, sp=True))
    mod = make_ffn("versatile", 2, sp=True, setup=False)
    ps.destroy_model_parallel()
    return mod.token_sparse


def test_sequence_parallel_module_runs_all_token_path(rank_pools):
    assert rank_pools(2).run(sp_module_is_all_token) == [False, False]
