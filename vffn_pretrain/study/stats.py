"""Statistics over seeds: mean, sample standard deviation, Student-t 95% intervals, paired t-tests.

With n seeds the interval is mean ± t(0.975, n-1) · s / sqrt(n) (s with n-1 in the denominator). The paired
test of variants A and B uses the per-seed differences d_i = A_i - B_i (same seed: same base, same data
order), t = mean(d) / (s_d / sqrt(n)) with n-1 degrees of freedom, two-sided p-value, and the 95% t-interval of
mean(d). Fewer than two values give no interval and no test (None); so do differences without any spread
(identical to the last bit), where a t statistic would be infinite and say more than the data do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _sp


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None        # sample standard deviation (ddof=1); None for n < 2
    ci95: float | None       # half-width of the 95% t-interval; None for n < 2

    @property
    def lo(self) -> float | None:
        return None if self.ci95 is None else self.mean - self.ci95

    @property
    def hi(self) -> float | None:
        return None if self.ci95 is None else self.mean + self.ci95


def summarize(values: list[float]) -> Summary:
    """Mean, std and 95% t-interval of ``values`` (NaNs are an error: a missing loss is not a number)."""
    if not values:
        raise ValueError("no values to summarize")
    if any(math.isnan(v) for v in values):
        raise ValueError("a value is NaN")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Summary(n, mean, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(n, mean, std, float(_sp.t.ppf(0.975, n - 1)) * std / math.sqrt(n))


@dataclass(frozen=True)
class PairedTest:
    n: int
    mean_diff: float         # mean of a_i - b_i
    t: float | None          # None for n < 2 or differences without spread
    p: float | None          # two-sided
    ci95: float | None = None  # half-width of the 95% t-interval of mean_diff
    above: int = 0           # pairs with a_i > b_i
    below: int = 0           # pairs with a_i < b_i

    @property
    def lo(self) -> float | None:
        return None if self.ci95 is None else self.mean_diff - self.ci95

    @property
    def hi(self) -> float | None:
        return None if self.ci95 is None else self.mean_diff + self.ci95

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p is not None and self.p < alpha


def paired_t(a: list[float], b: list[float]) -> PairedTest:
    """Paired t-test of ``a`` against ``b`` (equal length, paired by position)."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        raise ValueError("no pairs")
    mean = sum(d) / n
    above, below = sum(x > 0 for x in d), sum(x < 0 for x in d)
    if n < 2:
        return PairedTest(n, mean, None, None, None, above, below)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    if sd == 0:  # no spread to test against
        return PairedTest(n, mean, None, None, 0.0, above, below)
    t = mean / (sd / math.sqrt(n))
    half = float(_sp.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return PairedTest(n, mean, t, float(2 * _sp.t.sf(abs(t), n - 1)), half, above, below)
