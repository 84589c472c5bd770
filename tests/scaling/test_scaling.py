"""Scaling-law fits recover known laws from synthetic sweeps; the CLI reads, compares, plots and
rejects bad sweeps with messages that name the culprit."""

import json
import math

import numpy as np
import pytest

from vffn_pretrain.scaling import fit as fit_mod
from vffn_pretrain.scaling.cli import main
from vffn_pretrain.scaling.compare import compute_points, param_points
from vffn_pretrain.scaling.fit import FitError, chinchilla_identifiable, fit_chinchilla, fit_power_law
from vffn_pretrain.scaling.summaries import SummaryError, load_runs

# L(C) = a C^-b + c with a chosen so the reducible part is ~3 at C = 1e15
A_TRUE, B_TRUE, C_TRUE = 3.0 * 1e15**0.25, 0.25, 1.8
# Hoffmann et al. (2022) published Chinchilla fit
CHIN = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def power_law_data(n, noise, seed=0):
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e15, 1e20, n)
    y = (A_TRUE * x**-B_TRUE + C_TRUE) * np.exp(rng.normal(0.0, noise, n))
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_law_recovers_known_parameters(seed):
    x, y = power_law_data(8, noise=5e-4, seed=seed)
    f = fit_power_law(x, y)
    assert f.ci_method == "covariance"
    for est, true in ((f.a, A_TRUE), (f.b, B_TRUE), (f.c, C_TRUE)):
        assert est.value == pytest.approx(true, rel=0.05)
        assert est.lo < est.value < est.hi
    # the intervals are honest: the truth lies inside them
    assert f.b.lo <= B_TRUE <= f.b.hi and f.c.lo <= C_TRUE <= f.c.hi
    assert f.predict(1e17) == pytest.approx(A_TRUE * 1e17**-B_TRUE + C_TRUE, rel=1e-3)


def test_power_law_with_four_noisy_points_still_close():
    x, y = power_law_data(4, noise=2e-3, seed=3)
    f = fit_power_law(x, y)
    assert f.b.value == pytest.approx(B_TRUE, rel=0.05)
    assert f.c.value == pytest.approx(C_TRUE, rel=0.05)
    assert f.b.lo <= B_TRUE <= f.b.hi


def test_three_points_fit_exactly_without_interval():
    x, y = power_law_data(3, noise=0.0)
    f = fit_power_law(x, y)
    assert f.ci_method == "none" and math.isnan(f.b.lo)
    assert f.b.value == pytest.approx(B_TRUE, rel=0.01)
    assert f.c.value == pytest.approx(C_TRUE, rel=0.01)
    assert f.a.as_dict()["lo"] is None  # JSON-safe


def test_singular_covariance_falls_back_to_bootstrap(monkeypatch):
    real = fit_mod._curve_fit_best

    def singular(*args, **kwargs):
        popt, pcov, sse = real(*args, **kwargs)
        return popt, np.full_like(pcov, np.inf), sse

    monkeypatch.setattr(fit_mod, "_curve_fit_best", singular)
    x, y = power_law_data(8, noise=2e-3, seed=4)
    f = fit_power_law(x, y)
    assert f.ci_method == "bootstrap"
    assert f.b.lo < f.b.value < f.b.hi and f.b.hi - f.b.lo < 0.1
    assert f.a.lo > 0


def test_power_law_rejects_too_few_distinct_points():
    with pytest.raises(FitError, match="3 distinct"):
        fit_power_law([1e15, 1e15, 1e16], [3.0, 3.1, 2.9])


def chinchilla_grid(noise, seed=0):
    n, d = np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e8, 3e10, 5))
    n, d = n.ravel(), d.ravel()
    rng = np.random.default_rng(seed)
    loss = CHIN["E"] + CHIN["A"] / n ** CHIN["alpha"] + CHIN["B"] / d ** CHIN["beta"]
    return n, d, loss * np.exp(rng.normal(0.0, noise, n.size))


def test_chinchilla_recovers_known_parameters_on_a_grid():
    n, d, loss = chinchilla_grid(noise=5e-4, seed=1)
    f = fit_chinchilla(n, d, loss)
    for key, true in CHIN.items():
        est = getattr(f, key)
        assert est.value == pytest.approx(true, rel=0.05), key
        assert est.lo <= true <= est.hi, key


def test_chinchilla_refuses_a_fixed_ratio_ladder():
    n = np.geomspace(1e7, 1e9, 8)
    assert "confounded" in chinchilla_identifiable(n, 20 * n)
    with pytest.raises(FitError, match="confounded"):
        fit_chinchilla(n, 20 * n, 2 + 1 / np.log(n))
    assert "6 runs" in chinchilla_identifiable(n[:5], 20 * n[:5])


# --- sweeps on disk -------------------------------------------------------------------------------


def write_summary(path, **over):
    s = {
        "variant": "dense",
        "model": "m",
        "params_total": 2e6,
        "params_non_embedding": 1e6,
        "flops_per_token_train": 1.8e7,
        "flops_per_token_eval": 6e6,
        "tokens": 2e7,
        "steps": 100,
        "final_train_loss": 3.0,
        "final_val_loss": 3.1,
        "wall_time_s": 12.5,
    }
    s.update(over)
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(s))


def write_ladder(root, variant, flop_factor, law, sizes=(1e6, 2e6, 4e6, 8e6, 16e6, 32e6), depth=1):
    """A ladder at 20 tokens/param; loss follows law(C) exactly (plus tiny noise)."""
    rng = np.random.default_rng(len(variant))
    for n in sizes:
        fpt = 6 * n * flop_factor
        tokens = 20 * n
        loss = law(fpt * tokens) * (1 + rng.normal(0, 1e-4))
        sub = root.joinpath(*[f"level{i}" for i in range(depth)], variant, f"n{int(n)}")
        write_summary(
            sub,
            variant=variant,
            model=f"n{int(n)}",
            params_non_embedding=n,
            params_total=n + 1e6,
            flops_per_token_train=fpt,
            tokens=tokens,
            final_val_loss=loss,
            final_train_loss=loss + 0.02,
        )


def test_cli_fits_compares_and_plots(tmp_path, capsys):
    def dense(c):
        return 1e3 * c**-0.2 + 1.5

    def versatile(c):  # better per parameter, but every token costs 4.25x the FLOPs
        return 1e3 * (c / 2.0) ** -0.2 + 1.5

    write_ladder(tmp_path / "sweep", "dense", 1.0, dense, depth=0)
    write_ladder(tmp_path / "sweep", "versatile", 4.25, versatile, depth=2)  # deeper nesting
    out = tmp_path / "out"
    assert main([str(tmp_path / "sweep"), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    assert result["n_runs"] == 12
    dense_fit = result["variants"]["dense"]["loss_vs_compute"]
    assert dense_fit["b"]["value"] == pytest.approx(0.2, rel=0.05)
    assert dense_fit["c"]["value"] == pytest.approx(1.5, rel=0.05)
    assert "confounded" in result["variants"]["dense"]["chinchilla"]["skipped"]
    # at equal compute the dense law is lower (versatile needs 2x C for the same loss) ...
    assert result["equal_compute"]["ranking"] == ["dense", "versatile"]
    c_med = result["equal_compute"]["x"]
    assert result["equal_compute"]["predictions"]["dense"]["loss"] == pytest.approx(dense(c_med), rel=1e-3)
    # ... while at equal parameters versatile is lower (it spent 4.25x the compute per parameter)
    assert result["equal_params"]["ranking"] == ["versatile", "dense"]
    for name in ("loss_vs_compute.png", "loss_vs_params.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert json.loads((out / "scaling_fits.json").read_text())["equal_compute"]["ranking"] == [
        "dense",
        "versatile",
    ]

    assert main([str(tmp_path / "sweep"), "--out", str(out), "--metric", "final_train_loss"]) == 0
    text = capsys.readouterr().out
    assert "at equal compute" in text and "lowest is dense" in text
    assert "at equal parameters" in text and "lowest is versatile" in text
    assert "metric final_train_loss" in text


def test_compute_frontier_and_longest_run_per_size(tmp_path):
    # a 2 x 2 grid of sizes x token counts: the bigger model trained briefly is dominated
    for n, t, loss in [(1e6, 2e7, 3.0), (1e6, 8e7, 2.8), (4e6, 2e7, 2.9), (4e6, 8e7, 2.5)]:
        write_summary(
            tmp_path / f"n{n:g}-t{t:g}",
            params_non_embedding=n,
            tokens=t,
            flops_per_token_train=6 * n,
            final_val_loss=loss,
        )
    runs = load_runs(tmp_path)
    front = compute_points(runs, "final_val_loss")
    assert [(r.params_non_embedding, r.tokens) for r in front] == [(1e6, 2e7), (1e6, 8e7), (4e6, 8e7)]
    assert [(r.params_non_embedding, r.tokens) for r in param_points(runs)] == [(1e6, 8e7), (4e6, 8e7)]


def test_cli_errors_name_the_directory(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert f"no summary.json found anywhere below {empty}" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ({"drop": "tokens"}, "missing key 'tokens'"),
        ({"final_val_loss": "low"}, "key 'final_val_loss' must be a number"),
        ({"flops_per_token_train": 0}, "key 'flops_per_token_train' must be > 0"),
        ({"final_train_loss": float("nan")}, "key 'final_train_loss' must be finite"),
        ({"variant": ""}, "key 'variant' must be a non-empty string"),
        ({"steps": True}, "key 'steps' must be a number"),
    ],
)
def test_malformed_summary_names_file_and_key(tmp_path, content, message):
    write_ladder(tmp_path, "dense", 1.0, lambda c: 2.0)
    bad = tmp_path / "bad"
    write_summary(bad, **{k: v for k, v in content.items() if k != "drop"})
    if "drop" in content:
        data = json.loads((bad / "summary.json").read_text())
        del data[content["drop"]]
        (bad / "summary.json").write_text(json.dumps(data))
    with pytest.raises(SummaryError) as err:
        load_runs(tmp_path)
    assert str(bad / "summary.json") in str(err.value) and message in str(err.value)


def test_unparseable_summary(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "r" / "summary.json") in err and "not readable as JSON" in err
    (tmp_path / "r" / "summary.json").write_text("[1, 2]")
    with pytest.raises(SummaryError, match="expected a JSON object"):
        load_runs(tmp_path)


def test_null_loss_only_matters_for_the_analysed_metric(tmp_path, capsys):
    write_ladder(tmp_path, "dense", 1.0, lambda c: 1e3 * c**-0.2 + 1.5)
    write_summary(tmp_path / "noval", params_non_embedding=3e6, tokens=6e7, final_val_loss=None)
    assert main([str(tmp_path), "--metric", "final_train_loss", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_runs"] == 7
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "noval" / "summary.json") in err and "'final_val_loss' is null" in err


def test_runs_that_stopped_early_are_left_out(tmp_path, capsys):
    write_ladder(tmp_path, "dense", 1.0, lambda c: 1e3 * c**-0.2 + 1.5)
    write_summary(
        tmp_path / "requeued", params_non_embedding=3e6, tokens=1e6, final_val_loss=9.0, exit_code=3
    )
    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert (
        "6 runs" in text
        and f"skipped (stopped early, exit_code 3): {tmp_path / 'requeued' / 'summary.json'}" in text
    )


def test_downstream_scores_are_shown_next_to_the_loss(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_ladder(sweep, "dense", 1.0, lambda c: 1e3 * c**-0.2 + 1.5, sizes=(1e6, 2e6, 4e6))
    scored = sweep / "level0" / "dense" / "n4000000" / "summary.json"
    data = json.loads(scored.read_text())
    data["downstream"] = {"jargon_cloze": {"acc": 0.3271, "acc_stderr": 0.0321}}
    scored.write_text(json.dumps(data))
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "downstream scores (vffn-eval)" in text
    line = next(x for x in text.splitlines() if "jargon_cloze" in x)
    assert "dense n4000000" in line and "acc 0.3271" in line and "stderr" not in line
    assert f"final_val_loss {data['final_val_loss']:.4f}" in line
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["downstream"] for r in runs if r["downstream"]] == [data["downstream"]]


def test_malformed_downstream_names_the_key(tmp_path):
    write_summary(tmp_path / "run", downstream={"jargon_cloze": {"acc": "high"}})
    with pytest.raises(SummaryError, match="'downstream'"):
        load_runs(tmp_path)
