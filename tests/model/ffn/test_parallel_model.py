"""Whole-model parallel checks: a VersatileFFN checkpoint written at TP=2 loads at TP=1 and back with the same
outputs (eval and train mode), and the MoE baseline runs with expert parallelism, matching EP=1."""

from tests.model.ffn.parity_cases import ep_case, pp_case, reshard_case


def test_checkpoint_reshards_between_tp2_and_tp1(rank_pools, tmp_path):
    for sub in ("tp2", "tp1"):
        (tmp_path / sub).mkdir()
    for out in rank_pools(2).run(reshard_case, str(tmp_path)):
        assert out["scale"] > 0.1
        for direction in ("tp2->tp1", "tp1->tp2"):
            eval_err, train_err = out[direction]
            assert eval_err < 2e-5, direction
            assert train_err < 2e-5, direction


def test_moe_with_expert_parallelism_matches_ep1(rank_pools):
    for out in rank_pools(2).run(ep_case):
        assert out["ep"] == 2
        err, scale = out["loss"]
        assert err <= 1e-5 * max(1.0, scale)
        assert out["expert_grad"] < 1e-6
        assert out["other_grad"] < 1e-6


def test_pipeline_parallel_matches_pp1(rank_pools, tmp_path):
    results = rank_pools(2).run(pp_case, str(tmp_path))
    assert [r["layers"] for r in results] == [[1], [2]]  # global layer numbers key the noise
    for out in results:
        assert abs(out["pp2"] - out["pp1"]) < 1e-5 * abs(out["pp1"])
