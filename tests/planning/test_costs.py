"""The cost model against hand-computed FLOPs and activation counts (spec-free arithmetic written out here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vffn_pretrain.model import counting
from vffn_pretrain.planning import costs

M354 = counting.ModelShape(15, 1024, 4096, 16, None, 50304, 4096)


def test_dense_layer_flops_by_hand():
    # Per token: QKV + out-proj 2 * 4 d^2, causal attention core 2 * d * T, SwiGLU 6 d d_ff; backward 2x.
    d, T, ff, b = 1024, 4096, 4096, 2
    item = costs.layer_cost(M354, counting.FFNShape("dense"), costs.StepShape(b, T))
    per_token = 8 * d * d + 2 * d * T + 6 * d * ff
    assert item.forward_flops == pytest.approx(b * T * per_token)
    assert item.backward_flops == pytest.approx(2 * b * T * per_token)
    tp2 = costs.layer_cost(M354, counting.FFNShape("dense"), costs.StepShape(b, T, tp=2))
    assert tp2.forward_flops == pytest.approx(item.forward_flops / 2)


def test_versatile_backward_follows_the_sampled_loops():
    d, T, ff = 1024, 4096, 4096
    F = 6 * d * ff  # one dense SwiGLU pass per token
    f = counting.FFNShape("versatile", num_experts=8, top_k=2, max_loops=4)
    step = costs.StepShape(1, T)
    one = costs.layer_cost(M354, f, step, loop_mix=[1.0, 0, 0, 0])
    deep = costs.layer_cost(M354, f, step, loop_mix=[0, 0, 0, 1.0])
    dense = costs.layer_cost(M354, counting.FFNShape("dense"), step)
    router = 2 * d * (8 + 4)
    # Forward: every token runs 4 loops + the k/N width path whatever it sampled.
    assert one.forward_flops == pytest.approx(dense.forward_flops + T * (3.25 * F + router))
    assert deep.forward_flops == one.forward_flops
    # Backward: 2 x (the graph kept): 1 loop + width (l = 1 < L_max) vs 4 loops and no width (l = L_max).
    attention_bwd = dense.backward_flops - T * 2 * F
    assert one.backward_flops == pytest.approx(attention_bwd + T * (2 * 1.25 * F + 2 * router))
    assert deep.backward_flops == pytest.approx(attention_bwd + T * (2 * 4 * F + 2 * router))
    all_token = costs.layer_cost(M354, f, costs.StepShape(1, T, token_sparse=False), loop_mix=[1.0, 0, 0, 0])
    assert all_token.backward_flops == pytest.approx(attention_bwd + T * (2 * 4.25 * F + 2 * router))
    # Stored activations: loops kept = E[l] with token-sparse, L_max without; per pass 2d + 3 d_ff values.
    per_pass = T * 2 * (2 * d + 3 * ff)
    assert deep.activation_bytes - one.activation_bytes == pytest.approx(3 * per_pass - T * 2 * ff)
    assert all_token.activation_bytes - one.activation_bytes == pytest.approx(3 * per_pass)


def test_eval_follows_the_argmax_mix_and_recompute_keeps_only_the_input():
    f = counting.FFNShape("versatile")
    step = costs.StepShape(1, 4096)
    shallow = costs.layer_cost(M354, f, step, eval_loop_mix=[1.0, 0, 0, 0], training=False)
    deep = costs.layer_cost(M354, f, step, eval_loop_mix=[0, 0, 0, 1.0], training=False)
    F = 6 * 1024 * 4096
    assert deep.forward_flops - shallow.forward_flops == pytest.approx(4096 * (3 * F - 0.25 * F - 2 * 1024 * 8))
    item = costs.layer_cost(M354, f, step).with_recompute("full")
    assert item.stored_bytes == 4096 * 2 * 1024
    assert item.backward_flops_effective == pytest.approx(item.backward_flops + item.forward_flops)


def test_head_and_items():
    step = costs.StepShape(1, 4096)
    head = costs.head_cost(M354, step)
    assert head.forward_flops == pytest.approx(4096 * 2 * 1024 * 50304)
    assert head.activation_bytes == pytest.approx(4096 * (2 * 2 * 1024 + 4 * 50304))
    items = costs.model_items(M354, [counting.FFNShape("dense")] * 15, step)
    assert [i.symbol for i in items] == ["E"] + ["t"] * 15 + ["L"]
    with pytest.raises(ValueError, match="14 FFN kinds for 15 layers"):
        costs.model_items(M354, [counting.FFNShape("dense")] * 14, step)


def test_planning_imports_without_torch():
    code = ("import sys; import vffn_pretrain.planning.planner, vffn_pretrain.planning.loops; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
