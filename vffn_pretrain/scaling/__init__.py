"""Scaling-law tooling: read a sweep's run summaries, fit L(C), L(N) and L(N, D) per FFN variant,
compare variants at equal compute and equal parameters, plot; and plan sweeps (``ladder``)."""

from vffn_pretrain.scaling.fit import (
    ChinchillaFit,
    Estimate,
    FitError,
    PowerLawFit,
    fit_chinchilla,
    fit_power_law,
)
from vffn_pretrain.scaling.summaries import Run, SummaryError, load_runs

__all__ = [
    "ChinchillaFit",
    "Estimate",
    "FitError",
    "PowerLawFit",
    "Run",
    "SummaryError",
    "fit_chinchilla",
    "fit_power_law",
    "load_runs",
]
