"""Fit every variant of a sweep and compare variants at equal compute and at equal parameters.

What is fitted, per variant (``metric`` is final_val_loss or final_train_loss):

* loss vs training compute C = flops_per_token_train x tokens: ``L(C) = a C^-b + c``. On a ladder
  (one tokens-per-parameter ratio) every run is used; on a grid with several ratios only the
  compute frontier is (runs with a lower loss than every cheaper run of that variant), because
  L(C) describes the best loss reachable at a compute budget, not every (N, D) split.
* loss vs non-embedding parameters N: ``L(N) = a N^-b + c``, using for each N the run that saw the
  most tokens (the fully trained point of that size).
* Chinchilla ``L(N, D)`` when the variant's grid can identify it (see
  :func:`~vffn_pretrain.scaling.fit.chinchilla_identifiable`).

Comparisons evaluate each variant's fit at one shared x: the median training compute over all runs
("at equal compute": which FFN is the better use of FLOPs) and the median non-embedding parameter
count ("at equal parameters": which FFN is the better use of memory). VersatileFFN and k-loop add
almost no parameters but several times the compute, so the two answers can disagree; that is the
point of showing both. A prediction outside the x range a variant was fitted on is marked as an
extrapolation.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from vffn_pretrain.scaling.fit import FitError, PowerLawFit, fit_chinchilla, fit_power_law
from vffn_pretrain.scaling.summaries import Run

# Ratios of tokens to parameters closer than this count as one ratio (a ladder, not a grid).
_RATIO_TOL = 0.01


def compute_points(runs: list[Run], metric: str) -> list[Run]:
    """The runs whose (compute, loss) enter a variant's L(C) fit, sorted by compute."""
    runs = sorted(runs, key=lambda r: (r.compute, r.loss(metric)))
    ratios = np.log([r.tokens / r.params_non_embedding for r in runs])
    if ratios.max() - ratios.min() <= np.log1p(_RATIO_TOL):
        return runs
    front, best = [], float("inf")
    for r in runs:
        if r.loss(metric) < best:
            front.append(r)
            best = r.loss(metric)
    return front


def param_points(runs: list[Run]) -> list[Run]:
    """For each distinct non-embedding size, the run with the most tokens; sorted by size."""
    by_size: dict[float, Run] = {}
    for r in runs:
        cur = by_size.get(r.params_non_embedding)
        if cur is None or r.tokens > cur.tokens:
            by_size[r.params_non_embedding] = r
    return [by_size[n] for n in sorted(by_size)]


def _try_power(x: list[float], y: list[float]) -> PowerLawFit | str:
    try:
        return fit_power_law(x, y)
    except FitError as e:
        return str(e)


def _compare(fits: dict[str, PowerLawFit | str], x: float, what: str, unit: str) -> dict:
    predictions = {}
    for variant, fit in sorted(fits.items()):
        if isinstance(fit, str):
            continue
        lo, hi = fit.x_range
        predictions[variant] = {
            "loss": float(fit.predict(x)),
            "extrapolated": not lo * (1 - 1e-9) <= x <= hi * (1 + 1e-9),
        }
    skipped = sorted(v for v, f in fits.items() if isinstance(f, str))
    ranked = sorted(predictions, key=lambda v: predictions[v]["loss"])
    parts = []
    for v in ranked:
        mark = " (extrapolated)" if predictions[v]["extrapolated"] else ""
        parts.append(f"{v} {predictions[v]['loss']:.4f}{mark}")
    if not ranked:
        text = f"at equal {what}: no variant has enough runs for a fit"
    else:
        text = f"at equal {what} ({unit} = {x:.3g}): " + " < ".join(parts)
        if len(ranked) > 1:
            best, second = ranked[0], ranked[1]
            gap = predictions[second]["loss"] - predictions[best]["loss"]
            text += (
                f"; lowest is {best}, {gap:.4f} ({100 * gap / predictions[second]['loss']:.2f}%)"
                f" below {second}"
            )
        else:
            text += f"; only {ranked[0]} could be fitted"
    if skipped:
        text += f"; not fitted: {', '.join(skipped)}"
    return {"x": x, "predictions": predictions, "ranking": ranked, "not_fitted": skipped, "text": text}


def analyse(runs: list[Run], metric: str) -> dict:
    """Fit all variants and compare them. Returns a JSON-ready dict; fitted objects are kept under
    the private keys ``_compute_fits`` / ``_param_fits`` for plotting."""
    by_variant: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_variant[r.variant].append(r)

    compute_fits: dict[str, PowerLawFit | str] = {}
    param_fits: dict[str, PowerLawFit | str] = {}
    variants = {}
    for variant, vruns in sorted(by_variant.items()):
        cpts = compute_points(vruns, metric)
        ppts = param_points(vruns)
        compute_fits[variant] = _try_power([r.compute for r in cpts], [r.loss(metric) for r in cpts])
        param_fits[variant] = _try_power(
            [r.params_non_embedding for r in ppts], [r.loss(metric) for r in ppts]
        )
        try:
            chin = fit_chinchilla(
                [r.params_non_embedding for r in vruns],
                [r.tokens for r in vruns],
                [r.loss(metric) for r in vruns],
            ).as_dict()
        except FitError as e:
            chin = {"skipped": str(e)}

        def describe(fit: PowerLawFit | str) -> dict:
            return {"skipped": fit} if isinstance(fit, str) else fit.as_dict()

        variants[variant] = {
            "n_runs": len(vruns),
            "models": sorted({r.model for r in vruns}),
            "loss_vs_compute": describe(compute_fits[variant]),
            "loss_vs_params": describe(param_fits[variant]),
            "chinchilla": chin,
        }

    median_c = float(np.median([r.compute for r in runs]))
    median_n = float(np.median([r.params_non_embedding for r in runs]))
    return {
        "metric": metric,
        "n_runs": len(runs),
        "variants": variants,
        "runs": [{"path": str(r.path), "variant": r.variant, "model": r.model, "loss": r.loss(metric),
                  "downstream": r.downstream} for r in runs],
        "equal_compute": _compare(compute_fits, median_c, "compute", "C [FLOPs]"),
        "equal_params": _compare(param_fits, median_n, "parameters", "N [non-embedding]"),
        "_compute_fits": compute_fits,
        "_param_fits": param_fits,
    }
