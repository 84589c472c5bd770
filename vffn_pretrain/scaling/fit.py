"""Scaling-law fits with confidence intervals.

Two forms:

* saturating power law ``L(x) = a * x^(-b) + c`` (x = training compute C, or parameters N);
* Chinchilla ``L(N, D) = E + A / N^alpha + B / D^beta`` (N = non-embedding parameters, D = tokens).

Both are fitted by least squares on log L (relative errors: a 0.01 miss at loss 2 weighs the same
at every scale), with x normalised by its geometric mean so the optimiser works on O(1) numbers,
bounded parameters (exponents and amplitudes positive, irreducible loss in [0, min L)) and several
starting points (the one with the lowest residual wins), because these fits have shallow, curved
valleys where a single start often stops early.

95% confidence intervals come from the covariance of the fit (Student t with n - p degrees of
freedom; amplitudes via the delta method on their logarithm, so their intervals stay positive). If
the covariance is singular, they come from a case-resampling bootstrap. With no spare degree of
freedom (n == p) the fit is exact and no interval is given (``ci_method == "none"``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 300


@dataclass(frozen=True)
class Estimate:
    """A fitted value with its 95% interval (NaN bounds when no interval could be computed)."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict:
        # JSON has no NaN: a missing interval is null
        def num(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {"value": self.value, "lo": num(self.lo), "hi": num(self.hi)}

    def __str__(self) -> str:
        if math.isnan(self.lo):
            return f"{self.value:.4g} (no CI)"
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


@dataclass(frozen=True)
class PowerLawFit:
    """``L(x) = a * x^(-b) + c`` fitted on ``n_points`` points."""

    a: Estimate
    b: Estimate
    c: Estimate
    n_points: int
    ci_method: str  # "covariance" | "bootstrap" | "none"
    rmse_log: float  # root-mean-square residual of log L
    x_range: tuple[float, float]

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        # a * x^-b computed as exp(log a - b log x): a can be astronomically large for compute
        x = np.asarray(x, dtype=float)
        return np.exp(np.log(self.a.value) - self.b.value * np.log(x)) + self.c.value

    def as_dict(self) -> dict:
        return {
            "form": "L = a * x^(-b) + c",
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "c": self.c.as_dict(),
            "n_points": self.n_points,
            "ci_method": self.ci_method,
            "rmse_log": self.rmse_log,
            "x_range": list(self.x_range),
        }


@dataclass(frozen=True)
class ChinchillaFit:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` fitted on ``n_points`` points."""

    E: Estimate
    A: Estimate
    alpha: Estimate
    B: Estimate
    beta: Estimate
    n_points: int
    ci_method: str
    rmse_log: float

    def predict(self, n: float | np.ndarray, d: float | np.ndarray) -> float | np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return (
            self.E.value
            + np.exp(np.log(self.A.value) - self.alpha.value * np.log(n))
            + np.exp(np.log(self.B.value) - self.beta.value * np.log(d))
        )

    def as_dict(self) -> dict:
        return {
            "form": "L = E + A / N^alpha + B / D^beta",
            **{k: getattr(self, k).as_dict() for k in ("E", "A", "alpha", "B", "beta")},
            "n_points": self.n_points,
            "ci_method": self.ci_method,
            "rmse_log": self.rmse_log,
        }


class FitError(ValueError):
    """Too few or degenerate points for the requested fit."""


# --- generic bounded least squares with CIs ------------------------------------------------------


@dataclass
class _RawFit:
    params: np.ndarray
    cov: np.ndarray | None  # None when singular / undefined
    sse: float
    n: int
    samples: np.ndarray | None = field(default=None)  # bootstrap parameter samples


def _curve_fit_best(
    model: Callable, x: np.ndarray, y: np.ndarray, starts: Sequence[np.ndarray], bounds: tuple
) -> tuple[np.ndarray, np.ndarray, float]:
    best = None
    for p0 in starts:
        p0 = np.clip(p0, bounds[0], bounds[1])
        try:
            with warnings.catch_warnings():
                # n == p gives an infinite covariance warning; handled by the caller
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                popt, pcov = optimize.curve_fit(model, x, y, p0=p0, bounds=bounds, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((model(x, *popt) - y) ** 2))
        if math.isfinite(sse) and (best is None or sse < best[2]):
            best = (popt, pcov, sse)
    if best is None:
        raise FitError("least-squares fit did not converge from any starting point")
    return best


def _fit(
    model: Callable,
    x: np.ndarray,
    y: np.ndarray,
    starts: Sequence[np.ndarray],
    bounds: tuple,
    min_distinct: int,
    rng: np.random.Generator,
) -> _RawFit:
    n, p = len(y), len(starts[0])
    popt, pcov, sse = _curve_fit_best(model, x, y, starts, bounds)
    if n <= p:
        return _RawFit(popt, None, sse, n)
    if np.all(np.isfinite(pcov)) and np.all(np.diag(pcov) > 0):
        # curve_fit already scaled the covariance by the residual variance sse / (n - p)
        return _RawFit(popt, pcov, sse, n)

    # Singular covariance: case-resampling bootstrap, skipping resamples that cannot pin the model.
    def take(idx: np.ndarray) -> np.ndarray:
        return x[idx] if x.ndim == 1 else x[:, idx]

    def distinct(xs: np.ndarray) -> int:
        return len(np.unique(xs)) if xs.ndim == 1 else len(np.unique(xs.T, axis=0))

    samples = []
    for _ in range(BOOTSTRAP_SAMPLES):
        idx = rng.integers(0, n, n)
        if distinct(take(idx)) < min_distinct:
            continue
        try:
            bp, _, _ = _curve_fit_best(model, take(idx), y[idx], [popt], bounds)
        except FitError:
            continue
        samples.append(bp)
    return _RawFit(popt, None, sse, n, np.array(samples) if len(samples) >= 20 else None)


def _ci_method(raw: _RawFit) -> str:
    if raw.cov is not None:
        return "covariance"
    return "bootstrap" if raw.samples is not None else "none"


def _estimate(raw: _RawFit, i: int, log_grad: np.ndarray | None = None, log_offset: float = 0.0) -> Estimate:
    """Estimate for parameter i, or for exp(log_offset + log_grad . params) when log_grad is given
    (an amplitude parametrised through its logarithm)."""
    p = raw.params
    if log_grad is None:
        value = float(p[i])
    else:
        value = float(np.exp(log_offset + log_grad @ p))
    nan = float("nan")
    if raw.cov is not None:
        t = stats.t.ppf(0.5 + CONFIDENCE / 2, raw.n - len(p))
        if log_grad is None:
            se = math.sqrt(raw.cov[i, i])
            return Estimate(value, value - t * se, value + t * se)
        se = math.sqrt(float(log_grad @ raw.cov @ log_grad))
        log_v = log_offset + float(log_grad @ p)
        return Estimate(value, math.exp(log_v - t * se), math.exp(log_v + t * se))
    if raw.samples is not None:
        s = raw.samples[:, i] if log_grad is None else np.exp(log_offset + raw.samples @ log_grad)
        lo, hi = np.percentile(s, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        return Estimate(value, float(lo), float(hi))
    return Estimate(value, nan, nan)


# --- L(x) = a x^-b + c -------------------------------------------------------------------------


def _power_model(u, log_a, b, c):
    # u = log(x / x0); returns log L
    return np.log(np.exp(log_a - b * u) + c)


def fit_power_law(x: Sequence[float], loss: Sequence[float], *, seed: int = 0) -> PowerLawFit:
    """Fit ``L = a * x^(-b) + c`` to at least 3 points with at least 3 distinct x values."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(loss, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise FitError("x and loss must be 1-D sequences of equal length")
    if len(np.unique(x)) < 3:
        raise FitError(f"a 3-parameter power law needs >= 3 distinct x values, got {len(np.unique(x))}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise FitError("x and loss must be positive")
    log_x0 = float(np.mean(np.log(x)))
    u = np.log(x) - log_x0
    y_log = np.log(y)
    l_min = float(y.min())
    c_hi = l_min * (1 - 1e-6)
    bounds = ([-30.0, 1e-4, 0.0], [30.0, 5.0, c_hi])

    # Starting points: for each candidate floor c, log(L - c) is linear in u; its slope gives b.
    starts = []
    for frac in (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
        c0 = frac * l_min
        slope, intercept = np.polyfit(u, np.log(y - c0), 1)
        starts.append(np.array([intercept, float(np.clip(-slope, 1e-3, 4.0)), min(c0, c_hi)]))

    raw = _fit(_power_model, u, y_log, starts, bounds, min_distinct=3, rng=np.random.default_rng(seed))
    # a = exp(log_a' + b * log x0), since a x^-b = a' (x/x0)^-b
    a = _estimate(raw, 0, log_grad=np.array([1.0, log_x0, 0.0]))
    resid = _power_model(u, *raw.params) - y_log
    return PowerLawFit(
        a=a,
        b=_estimate(raw, 1),
        c=_estimate(raw, 2),
        n_points=len(y),
        ci_method=_ci_method(raw),
        rmse_log=float(np.sqrt(np.mean(resid**2))),
        x_range=(float(x.min()), float(x.max())),
    )


# --- L(N, D) = E + A/N^alpha + B/D^beta -------------------------------------------------------------


def _chinchilla_model(uv, e, log_a, alpha, log_b, beta):
    u, v = uv  # log(N/N0), log(D/D0)
    return np.log(e + np.exp(log_a - alpha * u) + np.exp(log_b - beta * v))


def chinchilla_identifiable(n_params: Sequence[float], tokens: Sequence[float]) -> str | None:
    """None if (N, D) can pin down the 5-parameter form, else the reason it cannot: it needs at
    least 6 runs, 2 distinct N, 2 distinct D, and N and D not locked together (a ladder with a fixed
    tokens-per-parameter ratio has log D = log N + const, so A/alpha and B/beta are confounded)."""
    n = np.log(np.asarray(n_params, dtype=float))
    d = np.log(np.asarray(tokens, dtype=float))
    if len(n) < 6:
        return f"needs >= 6 runs (5 parameters + 1), got {len(n)}"
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        return "needs several model sizes and several token counts"
    design = np.column_stack([np.ones_like(n), n, d])
    if np.linalg.matrix_rank(design, tol=1e-6 * max(1.0, float(np.abs(design).max()))) < 3:
        return "model size and tokens vary together (fixed tokens per parameter): N and D are confounded"
    return None


def fit_chinchilla(
    n_params: Sequence[float], tokens: Sequence[float], loss: Sequence[float], *, seed: int = 0
) -> ChinchillaFit:
    """Fit ``L = E + A/N^alpha + B/D^beta``. Raises FitError when :func:`chinchilla_identifiable`
    says the grid cannot determine it."""
    reason = chinchilla_identifiable(n_params, tokens)
    if reason:
        raise FitError(f"Chinchilla fit {reason}")
    nn = np.asarray(n_params, dtype=float)
    dd = np.asarray(tokens, dtype=float)
    y = np.asarray(loss, dtype=float)
    log_n0, log_d0 = float(np.mean(np.log(nn))), float(np.mean(np.log(dd)))
    uv = np.vstack([np.log(nn) - log_n0, np.log(dd) - log_d0])
    y_log = np.log(y)
    l_min = float(y.min())
    e_hi = l_min * (1 - 1e-6)
    bounds = ([0.0, -30.0, 1e-3, -30.0, 1e-3], [e_hi, 30.0, 3.0, 30.0, 3.0])
    starts = []
    for e_frac in (0.3, 0.6, 0.85):
        e0 = e_frac * l_min
        amp = math.log(max(float(np.mean(y)) - e0, 1e-3) / 2)  # split the reducible loss evenly
        for alpha0 in (0.2, 0.5):
            for beta0 in (0.2, 0.5):
                starts.append(np.array([e0, amp, alpha0, amp, beta0]))
    raw = _fit(_chinchilla_model, uv, y_log, starts, bounds, min_distinct=6, rng=np.random.default_rng(seed))
    resid = _chinchilla_model(uv, *raw.params) - y_log
    return ChinchillaFit(
        E=_estimate(raw, 0),
        A=_estimate(raw, 1, log_grad=np.array([0.0, 1.0, log_n0, 0.0, 0.0])),
        alpha=_estimate(raw, 2),
        B=_estimate(raw, 3, log_grad=np.array([0.0, 0.0, 0.0, 1.0, log_d0])),
        beta=_estimate(raw, 4),
        n_points=len(y),
        ci_method=_ci_method(raw),
        rmse_log=float(np.sqrt(np.mean(resid**2))),
    )
