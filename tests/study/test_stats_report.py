"""Study statistics and report against hand-computed references (no training).

References: for the t-interval, t(0.975, 3) = 3.182446305284263 (tables); for the paired test with 2 degrees
of freedom the Student-t CDF has the closed form F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p-value
is 1 - |t| / sqrt(2 + t^2)."""

from __future__ import annotations

import json
import math

import pytest

from vffn_pretrain.study.cli import main
from vffn_pretrain.study.collect import loop_stats
from vffn_pretrain.study.report import p_text, paired_words
from vffn_pretrain.study.stats import paired_t, summarize


def test_summary_matches_hand_computation():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    assert s.ci95 == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2)
    one = summarize([2.0])
    assert (one.mean, one.std, one.ci95) == (2.0, None, None)


def test_paired_t_matches_closed_form_for_two_degrees_of_freedom():
    test = paired_t([1.0, 2.0, 3.5], [0.5, 1.0, 2.0])  # differences 0.5, 1, 1.5: mean 1, sd 0.5
    t = 1.0 / (0.5 / math.sqrt(3))
    assert test.t == pytest.approx(t)
    assert test.p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 0.0742
    assert not test.significant()
    # Same differences, opposite sign: same p, negative t.
    assert paired_t([0.5, 1.0, 2.0], [1.0, 2.0, 3.5]).t == pytest.approx(-t)
    # The 95% interval of the mean difference: t(0.975, 2) = 4.302652729911275 times 0.5 / sqrt(3).
    assert test.ci95 == pytest.approx(4.302652729911275 * 0.5 / math.sqrt(3))
    assert (test.above, test.below) == (3, 0)
    with pytest.raises(ValueError):
        paired_t([1.0], [1.0, 2.0])


def test_identical_differences_give_no_test_rather_than_infinite_evidence():
    test = paired_t([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])  # every difference exactly 0.5
    assert test.mean_diff == 0.5 and test.t is None and test.p is None and not test.significant()
    assert test.ci95 == 0.0 and (test.above, test.below) == (3, 0)


def test_p_values_and_paired_wording():
    assert p_text(0.0004) == "p<0.001" and p_text(0.0123) == "p=0.012" and p_text(None) == "—"
    test = {"n": 3, "above": 3, "below": 0, "lo": 0.0401, "hi": 0.0562}
    assert paired_words(test) == "worse in 3 of 3 seeds, paired 95% CI [+0.0401, +0.0562]"
    assert paired_words({**test, "above": 1, "below": 2, "lo": -0.02, "hi": 0.01}) == \
        "better in 2 of 3 seeds, paired 95% CI [-0.0200, +0.0100]"


def test_loop_stats_from_eval_histogram():
    # p = (0.1, 0.2, 0.3, 0.4): mean 0.1 + 0.4 + 0.9 + 1.6 = 3.0; width path skipped by the 40% at L_max.
    assert loop_stats("versatile", [1, 2, 3, 4]) == (pytest.approx(3.0), pytest.approx(0.6))
    assert loop_stats("depth_only", [1, 2, 3, 4]) == (pytest.approx(3.0), None)
    assert loop_stats("kloop", None) == (None, None)


# Synthetic study: per seed, losses with known means. dense 3.00; the others offset from dense by a constant
# plus a per-seed wobble, so the paired differences and their tests are known.
SEEDS = (1, 2, 3)
DENSE = {1: 3.00, 2: 3.02, 3: 2.98}
OFFSETS = {  # variant: per-seed offsets from dense
    "versatile": (-0.050, -0.052, -0.048),   # consistently below: significant
    "kloop6": (-0.040, -0.020, -0.060),      # below on average, noisy
    "kloop4": (-0.030, -0.031, -0.029),
    "kloop2": (0.010, -0.030, 0.023),        # mean +0.001: not below dense, not significant
    "moe": (0.100, 0.101, 0.099),            # MoE worst here: the paper's "MoE lowest" fails
}


def _write_study(root, missing: str | None = None):
    runs = []
    for seed in SEEDS:
        runs.append(("base", "dense", seed, DENSE[seed] + 0.2))
        runs.append(("continued", "dense", seed, DENSE[seed]))
        for v, offs in OFFSETS.items():
            runs.append(("continued", v, seed, DENSE[seed] + offs[seed - 1]))
    plan = []
    for phase, variant, seed, loss in runs:
        name = f"base/seed{seed}" if phase == "base" else f"continued/{variant}/seed{seed}"
        run_dir = root / name
        run_dir.mkdir(parents=True)
        plan.append({"name": name, "phase": phase, "variant": variant, "seed": seed, "steps": 10,
                     "kind": "kloop" if variant.startswith("kloop") else variant,
                     "run_dir": str(run_dir), "after": None, "overrides": []})
        if name == missing:
            continue
        summary = {"exit_code": 0, "steps": 10, "final_val_loss": loss, "final_val_ppl": math.exp(loss),
                   "final_val_loss_train_mode": loss + 0.01 * (variant == "versatile"),
                   "eval_loop_mix": [0.25, 0.25, 0.25, 0.25] if variant == "versatile" else None,
                   "flops_per_token_train": 1e6, "flops_per_token_eval": 3e5, "wall_time_s": 5.0, "tokens": 100}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        # Training-loss windows at steps 5 and 10: the last 5% of 10 steps holds only the window ending at 10.
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
            {"step": 5, "loss_avg": loss + 0.5}, {"step": 5, "val_loss": loss + 0.1},
            {"step": 10, "loss_avg": loss - 0.5}, {"step": 10, "val_loss": loss})))
    (root / "study.json").write_text(json.dumps({"name": "synthetic", "config": "x.yaml", "quick": False,
                                                 "seeds": list(SEEDS), "runs": plan}))


def test_report_numbers_and_orderings(tmp_path, capsys):
    _write_study(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    out = tmp_path / "report"
    data = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in data["rows"] if r["arm"] == "continued"}
    assert rows["dense"]["loss"]["mean"] == pytest.approx(3.0)
    # Per-seed values of every metric, so that readers can redo the tests.
    assert rows["versatile"]["per_seed"]["2"]["val"] == pytest.approx(3.02 - 0.052)
    assert rows["versatile"]["per_seed"]["2"]["val_train_mode"] == pytest.approx(3.02 - 0.052 + 0.01)
    assert rows["versatile"]["per_seed"]["2"]["train"] == pytest.approx(3.02 - 0.052 - 0.5)
    assert rows["versatile"]["vs_dense_train_mode"]["mean_diff"] == pytest.approx(-0.04)
    assert rows["dense"]["loss"]["std"] == pytest.approx(0.02)  # 3.00, 3.02, 2.98
    assert rows["versatile"]["loss"]["mean"] == pytest.approx(2.95)
    assert rows["versatile"]["mean_loops"] == pytest.approx(2.5)
    assert rows["versatile"]["width_fraction"] == pytest.approx(0.75)
    vd = rows["versatile"]["vs_dense"]  # differences -0.050, -0.052, -0.048: sd 0.002
    t = -0.05 / (0.002 / math.sqrt(3))
    assert vd["t"] == pytest.approx(t)
    assert vd["p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))
    assert vd["significant"] and (vd["above"], vd["below"]) == (0, 3)
    paired_half = 4.302652729911275 * 0.002 / math.sqrt(3)
    assert (vd["lo"], vd["hi"]) == (pytest.approx(-0.05 - paired_half), pytest.approx(-0.05 + paired_half))
    assert rows["moe"]["flops_train_vs_dense"] == 1.0
    assert not rows["kloop2"]["vs_dense"]["significant"]
    claims = {c["claim"]: c for c in data["claims"]}
    assert claims["versatile < kloop6"]["holds"]  # 2.95 < 2.96
    assert claims["kloop4 < kloop2"]["holds"]  # 2.970 < 3.001
    assert not claims["kloop2 < dense"]["holds"]  # 3.001 vs 3.000
    assert not claims["moe < versatile"]["holds"]
    md = (out / "report.md").read_text()
    # 2.950, 2.968, 2.932: std 0.018, half-width t(0.975, 2) 0.018 / sqrt(3) with t = 4.302652729911275
    half = 4.302652729911275 * 0.018 / math.sqrt(3)
    assert f"| versatile | 3 | 2.9500 ± 0.0180 [{2.95 - half:.4f}, {2.95 + half:.4f}] |" in md
    assert "MoE does not have the lowest mean loss" in md
    assert (f"versatile: 0.0500 below dense continued, lower in 3 of 3 seeds, paired 95% CI "
            f"[{-0.05 - paired_half:+.4f}, {-0.05 + paired_half:+.4f}] (p<0.001)") in md  # p = 0.0004: not "p=0.000"
    assert "p=0.000" not in md and str(tmp_path) not in md
    assert "Wall times are left out" in md
    for png in ("final_loss.png", "delta_vs_dense.png", "val_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_lists_missing_runs(tmp_path, capsys):
    _write_study(tmp_path, missing="continued/kloop6/seed2")
    assert main(["report", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["missing"] == ["continued/kloop6/seed2"]
    assert {r["variant"]: r["seeds"] for r in data["rows"] if r["arm"] == "continued"}["kloop6"] == [1, 3]
    assert "1 runs not finished" in capsys.readouterr().err


def test_report_on_a_non_study_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vffn-study: error: {tmp_path}: not a study directory (no study.json; made by `vffn-study run`)"]
