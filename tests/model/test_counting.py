"""Parameter and FLOP counts against the numbers docs/method.md derives independently (§8, §9, §13, Table 2),
and `vffn-info` (which reports them for a composed Hydra config) on a throwaway conf tree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vffn_pretrain.info import info_from_config
from vffn_pretrain.model.counting import (
    WIDTH_FORMS,
    FFNShape,
    ModelShape,
    count_params,
    ffn_flops_multiplier,
    flops_breakdown,
    flops_per_token,
    padded_vocab_size,
    width_path_form,
)

V_PADDED = 50_304
PAPER = {  # d_model -> exact dense parameter count (docs/method.md §9.1)
    1024: 354_712_576,
    1536: 720_812_544,
    2048: 1_212_741_632,
}


def paper_model(d: int, seq_length: int = 4096) -> ModelShape:
    return ModelShape(
        num_layers=15,
        d_model=d,
        d_ff=4 * d,
        num_heads=16,
        num_query_groups=None,
        vocab_size=V_PADDED,
        seq_length=seq_length,
    )


VFFN = FFNShape("versatile", num_experts=8, top_k=2, max_loops=4)


def test_padded_vocab():
    assert padded_vocab_size(50_280) == V_PADDED
    assert padded_vocab_size(50_304) == V_PADDED
    assert padded_vocab_size(50_280, tensor_parallel=8) == 51_200  # multiple of 1024
    assert padded_vocab_size(1) == 128


@pytest.mark.parametrize("d", sorted(PAPER))
def test_dense_params_match_paper_exactly(d):
    assert count_params(paper_model(d), FFNShape("dense"))["params_total"] == PAPER[d]


@pytest.mark.parametrize(
    "d, overhead",
    [(1024, 184_320), (1536, 276_480), (2048, 368_640)],  # docs/method.md §8
)
def test_versatile_params_add_router_and_loop_head(d, overhead):
    c = count_params(paper_model(d), VFFN)
    assert c["params_total"] == PAPER[d] + overhead
    assert c["params_ffn_extra_per_layer"] == d * 12
    # 0.05% overhead, as docs/method.md §8 says, for the smallest model
    if d == 1024:
        assert round(100 * overhead / PAPER[d], 2) == 0.05


def test_variant_overheads():
    m = paper_model(1024)
    d, L = 1024, 15
    base = PAPER[d]
    total = {
        k: count_params(m, FFNShape(k, loops=4))["params_total"]
        for k in ("kloop", "width_only", "depth_only", "moe")
    }
    assert total["kloop"] == base
    assert total["width_only"] == base + L * d * 8
    assert total["depth_only"] == base + L * d * 4
    assert total["moe"] == base + L * (8 * 3 * d * 512 + d * 8)


@pytest.mark.parametrize("d, billions", [(1024, 0.54), (1536, 1.15), (2048, 1.97)])
def test_moe_sizes_match_paper(d, billions):
    # docs/method.md §9.4: "0.35->0.54B, 0.72->1.15B, 1.21->1.97B"
    total = count_params(paper_model(d), FFNShape("moe"))["params_total"]
    assert round(total / 1e9, 2) == billions


def test_non_embedding_and_breakdown_consistency():
    m = paper_model(1024)
    c = count_params(m, VFFN)
    assert c["params_embedding"] == c["params_lm_head"] == V_PADDED * 1024
    assert c["params_non_embedding"] == c["params_total"] - 2 * V_PADDED * 1024
    assert c["params_total"] == 15 * c["params_per_layer"] + 1024 + 2 * V_PADDED * 1024
    assert c["params_norms"] == 31 * 1024  # 2 per layer + final


def test_tied_embeddings_and_gqa():
    m = ModelShape(
        num_layers=2,
        d_model=256,
        d_ff=1024,
        num_heads=8,
        num_query_groups=2,
        vocab_size=1024,
        seq_length=128,
        tied_embeddings=True,
    )
    c = count_params(m, FFNShape("dense"))
    head_dim = 32
    qkv = 256 * (256 + 2 * 2 * head_dim)
    per_layer = qkv + 256 * 256 + 3 * 256 * 1024 + 2 * 256
    assert c["params_lm_head"] == 0
    assert c["params_total"] == 2 * per_layer + 256 + 1024 * 256
    assert c["params_non_embedding"] == 2 * per_layer + 256


@pytest.mark.parametrize(
    "f, training, expected",
    [
        (FFNShape("dense"), True, 1.0),
        (FFNShape("kloop", loops=2), True, 2.0),
        (FFNShape("kloop", loops=6), False, 6.0),
        (FFNShape("moe"), True, 1.25),
        (FFNShape("moe", num_experts=16, top_k=4), False, 1.25),
        (FFNShape("width_only"), True, 1.25),
        (VFFN, True, 4.25),  # docs/method.md §13
        (FFNShape("versatile", max_loops=2), True, 2.25),
        (FFNShape("depth_only"), True, 4.0),
        (FFNShape("depth_only"), False, 2.5),  # uniform mix over 1..4
        (VFFN, False, 2.5 + 0.75 * 0.25),  # uniform mix: E[l] + P(l<4) k/N
    ],
)
def test_ffn_multipliers(f, training, expected):
    assert ffn_flops_multiplier(f, training=training) == pytest.approx(expected)


def test_versatile_eval_multiplier_follows_loop_mix():
    # the range docs/method.md §13 gives for (4, 8, 2): 1.25 F at l=1 up to 4 F at l=4 (width skipped)
    assert ffn_flops_multiplier(VFFN, training=False, loop_mix=[1, 0, 0, 0]) == pytest.approx(1.25)
    assert ffn_flops_multiplier(VFFN, training=False, loop_mix=[0, 0, 0, 1]) == pytest.approx(4.0)
    p = [0.1, 0.2, 0.3, 0.4]
    expected = (1 * 0.1 + 2 * 0.2 + 3 * 0.3 + 4 * 0.4) + 0.6 * 0.25
    assert ffn_flops_multiplier(VFFN, training=False, loop_mix=p) == pytest.approx(expected)
    # training ignores the mix: every loop always runs
    assert ffn_flops_multiplier(VFFN, training=True, loop_mix=p) == pytest.approx(4.25)


def test_width_reuse_variant():
    # docs/method.md §7/§13: L_max + (k/N)/3 = 4.083 in training, 1.083 at l=1
    assert ffn_flops_multiplier(VFFN, training=True, width_reuse=True) == pytest.approx(4 + 1 / 12)
    assert ffn_flops_multiplier(VFFN, training=False, loop_mix=[1, 0, 0, 0], width_reuse=True) == (
        pytest.approx(1 + 1 / 12)
    )


def test_bad_loop_mix_and_shapes_rejected():
    with pytest.raises(ValueError, match="entries"):
        ffn_flops_multiplier(VFFN, training=False, loop_mix=[0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        ffn_flops_multiplier(VFFN, training=False, loop_mix=[0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="unknown FFN kind"):
        FFNShape("mlp")
    with pytest.raises(ValueError, match="divisible"):
        count_params(ModelShape(1, 64, 100, 4, None, 128, 16), FFNShape("moe"))
    with pytest.raises(ValueError, match="num_heads"):
        ModelShape(1, 64, 256, 5, None, 128, 16)


# Table 2 "FFN FLOPs (G)" per model: 2 x FFN params x multiplier, forward, per token.
@pytest.mark.parametrize(
    "d, kind, loops, gflops",
    [
        (1024, "dense", 1, 0.38),
        (1024, "moe", 1, 0.47),
        (1024, "kloop", 2, 0.75),
        (1024, "kloop", 4, 1.50),
        (1024, "kloop", 6, 2.25),
        (1536, "dense", 1, 0.85),
        (1536, "moe", 1, 1.06),
        (1536, "kloop", 6, 5.10),
        (2048, "dense", 1, 1.51),
        (2048, "moe", 1, 1.89),
        (2048, "kloop", 4, 6.04),
    ],
)
def test_ffn_flops_match_table2(d, kind, loops, gflops):
    b = flops_breakdown(paper_model(d), FFNShape(kind, loops=loops), training=False)
    # the paper rounds its base FFN cost to 0.375 G before multiplying (4-Loop 1.50, 6-Loop 2.25)
    assert b["ffn"] / 1e9 == pytest.approx(gflops, rel=0.01)


def test_whole_model_354m_matches_spec_section13():
    m = paper_model(1024)
    b = flops_breakdown(m, FFNShape("dense"), training=False)
    # spec: attention projections 0.126, core 0.126, FFN 0.378, LM head 0.103, total 0.73 G
    assert b["attention_proj"] / 1e9 == pytest.approx(0.126, rel=0.01)
    assert b["attention_core"] / 1e9 == pytest.approx(0.126, rel=0.01)
    assert b["ffn"] / 1e9 == pytest.approx(0.378, rel=0.01)
    assert b["lm_head"] / 1e9 == pytest.approx(0.103, rel=0.01)
    assert b["forward"] / 1e9 == pytest.approx(0.73, rel=0.02)
    # VersatileFFN training forward ~1.96 G; inference at the ARC-c mix (3.28 F) ~1.60 G
    train_fwd = flops_breakdown(m, VFFN, training=True)["forward"]
    assert train_fwd / 1e9 == pytest.approx(1.96, rel=0.02)
    arc_c_mix = [0.14, 0.14, 0.10, 0.62]  # E[l] + P(l<4)/4 = 3.295, close to the measured 3.28
    assert flops_per_token(m, VFFN, training=False, loop_mix=arc_c_mix) / 1e9 == pytest.approx(1.60, rel=0.03)


def test_whole_model_1b_matches_spec_section13():
    m = paper_model(2048)
    assert flops_per_token(m, FFNShape("dense"), training=False) / 1e9 == pytest.approx(2.47, rel=0.02)
    assert flops_breakdown(m, VFFN, training=True)["forward"] / 1e9 == pytest.approx(7.38, rel=0.02)
    mix = [0.2, 0.15, 0.1, 0.55]  # E[l] + P(l<4)/4 = 3.1125 ~ the measured 3.11
    assert flops_per_token(m, VFFN, training=False, loop_mix=mix) / 1e9 == pytest.approx(5.65, rel=0.03)


@pytest.mark.parametrize("kind", ["dense", "kloop", "moe", "versatile", "width_only", "depth_only"])
def test_training_is_three_times_forward(kind):
    m = paper_model(1024)
    f = FFNShape(kind, loops=3)
    fwd_of_training_step = flops_breakdown(m, f, training=True)["forward"]
    assert flops_per_token(m, f, training=True) == pytest.approx(3 * fwd_of_training_step)
    if kind not in ("versatile", "depth_only"):  # non-adaptive: the same forward at train and eval
        assert flops_per_token(m, f, training=True) == pytest.approx(
            3 * flops_per_token(m, f, training=False)
        )


def test_attention_core_convention():
    m = paper_model(1024, seq_length=2048)
    causal = flops_breakdown(m, FFNShape("dense"), training=False)["attention_core"]
    full = flops_breakdown(m, FFNShape("dense"), training=False, causal=False)["attention_core"]
    assert causal == 15 * 2 * 2048 * 1024  # 2 (QK^T, AV) x 2 FLOP/MAC x d x T/2
    assert full == 2 * causal


# --- vffn-info -------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def write_conf(root: Path) -> Path:
    conf = root / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "ffn").mkdir()
    (conf / "config.yaml").write_text(
        "defaults:\n  - model: m354\n  - ffn: versatile\n  - _self_\n"
        "train:\n  seq_length: 4096\nparallel:\n  tp: 1\n"
    )
    (conf / "model" / "m354.yaml").write_text(
        "num_layers: 15\nhidden_size: 1024\nffn_hidden_size: 4096\nnum_attention_heads: 16\n"
        "num_query_groups: null\nvocab_size: 50280\n"
    )
    (conf / "ffn" / "versatile.yaml").write_text(
        "kind: versatile\nnum_experts: 8\ntop_k: 2\nmax_loops: 4\nloops: 1\n"
    )
    (conf / "ffn" / "dense.yaml").write_text("kind: dense\nloops: 1\n")
    return conf


def composed(conf: Path, overrides=()):
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_info_from_composed_config(tmp_path):
    info = info_from_config(composed(write_conf(tmp_path)))
    assert info["params_total"] == 354_712_576 + 15 * 12 * 1024  # docs/method.md §8, padded vocab 50,304
    assert info["vocab_size_padded"] == 50_304
    assert (info["num_layers"], info["d_model"], info["d_ff"]) == (15, 1024, 4096)
    assert info["eval_loop_mix"] == [0.25] * 4
    m = ModelShape(15, 1024, 4096, 16, None, 50_304, 4096)
    f = FFNShape("versatile")
    assert info["flops_per_token_train"] == pytest.approx(flops_per_token(m, f, training=True))
    assert info["flops_per_token_eval"] == pytest.approx(flops_per_token(m, f, training=False))
    assert info["params_non_embedding"] == count_params(m, f)["params_non_embedding"]


def test_info_overrides_tp_padding_and_loop_mix(tmp_path):
    conf = write_conf(tmp_path)
    info = info_from_config(composed(conf, ["ffn=dense", "parallel.tp=8", "+model.seq_length=1024"]))
    assert info["vocab_size_padded"] == 51_200  # multiple of 128 x 8
    assert info["params_total"] == 354_712_576 + 2 * 1024 * (51_200 - 50_304)
    assert info["eval_loop_mix"] is None
    assert info["seq_length"] == 1024  # model.seq_length wins over train.seq_length
    mixed = info_from_config(composed(conf, ["+info.eval_loop_mix=[0,0,0,1]"]))
    m = ModelShape(15, 1024, 4096, 16, None, 50_304, 4096)
    assert mixed["flops_per_token_eval"] == pytest.approx(
        flops_per_token(m, FFNShape("versatile"), training=False, loop_mix=[0, 0, 0, 1])
    )


def test_info_missing_key_is_named(tmp_path):
    conf = write_conf(tmp_path)
    with pytest.raises(ValueError, match="ffn.max_loops"):
        info_from_config(composed(conf, ["ffn.max_loops=null"]))
    with pytest.raises(ValueError, match="ffn.kind"):
        info_from_config(composed(conf, ["ffn.kind=mystery"]))


@pytest.mark.parametrize("flags_first", [True, False], ids=["flags-first", "overrides-first"])
def test_hydra_entry_prints_json_and_leaves_no_outputs(tmp_path, flags_first):
    """Hydra's flags before or after the overrides (vffn-info adds its quiet defaults among the overrides)."""
    conf = write_conf(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [f"--config-path={conf}", "ffn=dense"] if flags_first else ["ffn=dense", f"--config-path={conf}"]
    out = subprocess.run(
        [sys.executable, "-m", "vffn_pretrain.info", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(out.stdout)
    assert info["params_total"] == 354_712_576
    assert list(work.iterdir()) == []  # no outputs/, no .hydra/, no log file


def test_width_form_counts_what_the_code_computes():
    # sparse: each expert's fc2 on its own tokens, (k/N)/3 of F; masked-dense: a whole fc2 pass, 1/3 of F
    assert ffn_flops_multiplier(VFFN, training=True, width_form="sparse") == pytest.approx(4 + 1 / 12)
    assert ffn_flops_multiplier(VFFN, training=True, width_form="masked_dense") == pytest.approx(4 + 1 / 3)
    one_loop = [1, 0, 0, 0]
    assert ffn_flops_multiplier(VFFN, training=False, loop_mix=one_loop, width_form="sparse") == pytest.approx(
        1 + 1 / 12)
    assert ffn_flops_multiplier(VFFN, training=False, loop_mix=one_loop, width_form="masked_dense") == (
        pytest.approx(1 + 1 / 3))
    for form in WIDTH_FORMS:  # tokens at L_max take no width path
        assert ffn_flops_multiplier(VFFN, training=False, loop_mix=[0, 0, 0, 1], width_form=form) == 4.0
    # width_only computes H + fc2((1 + m) * a1): the routed experts ride on the dense pass
    width_only = FFNShape("width_only")
    assert ffn_flops_multiplier(width_only, training=True) == pytest.approx(1.25)  # the paper's count
    assert ffn_flops_multiplier(width_only, training=True, width_form=width_path_form("width_only", 1)) == 1.0
    with pytest.raises(ValueError, match="width_form"):
        ffn_flops_multiplier(VFFN, training=True, width_form="dense")


def test_width_path_form_follows_the_layout():
    assert width_path_form("versatile", 1, "cpu") == "sparse"
    assert width_path_form("versatile", 1, "cuda") == "masked_dense"  # no host sync, one GEMM
    assert width_path_form("versatile", 2, "cuda") == "masked_dense"
    assert width_path_form("width_only", 1, "cpu") == "masked_dense"
