"""VersatileFFN and its ablations against the independent float64 reference
(vffn_pretrain/testing/ffn_reference.py).

For fixed Gumbel noise (the layout-invariant noise of model/noise.py, drawn for the full sequence), the module's
forward output, the gradient of its input and of every parameter match the per-token, per-expert reference, at
TP=1 and at TP=2 with and without sequence parallelism, balance loss included; eval mode matches the reference
with argmax loop counts. The loop histogram the module records equals the reference's.
"""

import pytest

from tests.model.ffn.parity_cases import parity, tp2_parity_suite

ATOL = 3e-5  # fp32 module vs fp64 reference; a wrong term shows up at 1e-3 and above


def check(result: dict, training: bool = True):
    names = ["y"] + (["grad_h", "w1", "w2", "norm", "router", "loop_head"] if training else [])
    for name in names:
        if name in result:
            err, scale = result[name]
            assert scale > 0, name
            assert err <= ATOL, f"{name}: max |module - reference| = {err:.3g} (scale {scale:.3g})"
    assert result["hist"] == result["ref_hist"]
    if not training:
        assert result["width_tokens"] == result["ref_width_tokens"]
        # tokens that ran loop l = tokens whose own count is >= l: nobody runs past its own count
        work = result["loop_work"] + [0] * (len(result["ref_loop_work"]) - len(result["loop_work"]))
        assert work == result["ref_loop_work"]


TP1_CASES = {
    "versatile": dict(kind="versatile", balance_coeff=0.05),
    "versatile_tau5": dict(kind="versatile", tau=5.0),
    "versatile_n4_k1_l2": dict(kind="versatile", num_experts=4, top_k=1, max_loops=2, balance_coeff=0.05),
    "depth_only": dict(kind="depth_only"),
    "width_only": dict(kind="width_only", balance_coeff=0.05),
    "kloop2": dict(kind="kloop", loops=2),
    "versatile_eval": dict(kind="versatile", training=False),
    "depth_only_eval": dict(kind="depth_only", training=False),
}


@pytest.mark.parametrize("name", sorted(TP1_CASES))
def test_tp1_matches_reference(single_rank, name):
    kw = TP1_CASES[name]
    check(parity(setup=False, **kw), kw.get("training", True))


@pytest.fixture(scope="module")
def tp2_results(rank_pools):
    return rank_pools(2).run(tp2_parity_suite)


@pytest.mark.parametrize("name", ["versatile", "versatile_sp", "versatile_eval", "versatile_eval_sp",
                                  "depth_only_sp", "width_only_sp", "kloop_sp", "versatile_n2"])
def test_tp2_matches_reference(tp2_results, name):
    for rank, results in enumerate(tp2_results):
        result = results[name]
        check(result, training="eval" not in name)
        # every rank reports the same global histogram after reduce_stats
        assert result["hist"] == tp2_results[0][name]["hist"], f"rank {rank}"
