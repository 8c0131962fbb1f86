"""Statistics engine of A/B experiments: ratio metrics, fixed and always-valid intervals, SRM, guardrails.

Units (a conversation, an API key) are the independent observations; answers inside a unit are
correlated. So every metric is a ratio of sums over units (sum of numerators / sum of denominators) and
its variance comes from the delta method, as GrowthBook's ``RatioStatistic`` does. A per-unit proportion
is the special case denominator = 1.

Libraries, and why:

* numpy: per-unit sums, variances, covariances and quantiles.
* scipy.stats: the Student t distribution (Welch fixed-horizon test) and ``chisquare`` (SRM check).
* The always-valid interval is the normal-mixture (mSPRT) confidence sequence that GrowthBook ships in
  ``gbstats.frequentist.tests.SequentialTwoSidedTTest``, re-implemented here in a few lines (see
  ``_sequential_half_width``). gbstats itself (0.8.0) is not used: it pins numpy<2 and pandas<2, which
  would downgrade the project's numpy, and we only need two formulas from it.

Degenerate inputs never raise and never produce NaN/inf: an arm with fewer than 2 units or a zero
denominator sum gives ``test="too few units"``; zero variance in both arms gives ``test="zero variance"``;
in both cases the p-value and intervals are None and ``significant`` is False (no evidence either way).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats as sps

TEST_NAME = "Welch t-test, delta method (ratio of sums)"
TOO_FEW_UNITS = "too few units"
ZERO_VARIANCE = "zero variance"


@dataclass(frozen=True)
class ArmSample:
    """Per-unit numerators and denominators of one arm (same length, one entry per unit)."""

    numerators: Sequence[float]
    denominators: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.numerators) != len(self.denominators):
            raise ValueError("numerators and denominators must have one entry per unit")

    @classmethod
    def from_units(cls, values: Iterable[tuple[float, float]]) -> ArmSample:
        pairs = list(values)
        return cls([float(n) for n, _ in pairs], [float(d) for _, d in pairs])

    @cached_property
    def _num(self) -> NDArray[np.float64]:
        return np.asarray(self.numerators, dtype=np.float64)

    @cached_property
    def _den(self) -> NDArray[np.float64]:
        return np.asarray(self.denominators, dtype=np.float64)

    @property
    def units(self) -> int:
        return len(self.numerators)

    @property
    def total(self) -> float:
        return float(self._num.sum())

    @property
    def count(self) -> float:
        return float(self._den.sum())

    @property
    def mean(self) -> float | None:
        """Ratio of sums; None when the denominator sum is 0 (no answers: the mean is undefined, not 0)."""
        count = self.count
        return self.total / count if count != 0 else None

    def variance_of_mean(self) -> float | None:
        """Delta-method variance of the ratio of sums R = sum(m) / sum(d).

        Var(R) ~= [s_m^2 - 2 R s_md + R^2 s_d^2] / (n * dbar^2), with sample (ddof=1) variances and
        covariance of the per-unit numerators m and denominators d. This is GrowthBook's RatioStatistic
        variance divided by n. It reduces to s^2 / n when every denominator is 1. None with < 2 units or
        a zero denominator sum.
        """
        n = self.units
        mean = self.mean
        if n < 2 or mean is None:
            return None
        cov = np.cov(self._num, self._den, ddof=1)
        dbar = self.count / n
        per_unit = (cov[0, 0] - 2 * mean * cov[0, 1] + mean**2 * cov[1, 1]) / dbar**2
        return max(float(per_unit), 0.0) / n


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control on one metric. None fields mean "no test possible" (see module docstring)."""

    diff: float | None
    ci95: tuple[float, float] | None
    p_value: float | None
    test: str
    sequential_ci95: tuple[float, float] | None
    significant: bool
    relative: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: rounded to 6 significant digits (p-value 4), never NaN/inf (those become None)."""
        return {
            "diff": _round(self.diff),
            "ci95": _round_pair(self.ci95),
            "p_value": _round(self.p_value, 4),
            "test": self.test,
            "sequential_ci95": _round_pair(self.sequential_ci95),
            "significant": bool(self.significant),
            "relative": _round(self.relative),
        }


def _round(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _round_pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    return None if pair is None else [_round(pair[0]), _round(pair[1])]


def _sequential_half_width(variance: float, n: int, *, tuning: float, alpha: float) -> float:
    """Half-width of the normal-mixture always-valid (1 - alpha) confidence sequence.

    Howard, Ramdas, McAuliffe & Sekhon (2021) "Time-uniform, nonparametric, nonasymptotic confidence
    sequences", two-sided normal mixture; as in Waudby-Smith et al. (2023, arXiv:2103.06476v7) eq. 9 and
    GrowthBook's gbstats SequentialTwoSidedTTest. ``variance`` is the variance of the estimate (so
    sigma^2 = variance * n per observation), n the number of units so far, and the mixing parameter
    rho^2 = (-2 ln a + ln(-2 ln a + 1)) / N* (ibid. eq. 161) makes the interval tightest near N* units.
    """
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning
    nr2 = n * rho2
    return math.sqrt(variance) * math.sqrt(2 * (nr2 + 1) / nr2 * math.log(math.sqrt(nr2 + 1) / alpha))


def _degenerate(diff: float | None, relative: float | None, test: str) -> Comparison:
    return Comparison(diff, None, None, test, None, False, relative)


def compare(
    control: ArmSample, treatment: ArmSample, *, sequential_tuning: float = 5000.0, alpha: float = 0.05
) -> Comparison:
    """Absolute difference treatment - control of ratio-of-sums means.

    Fixed horizon: Welch t-test with Welch-Satterthwaite degrees of freedom on the delta-method variances
    (GrowthBook's TwoSidedTTest); valid for one look at a pre-set sample size. Sequential: the
    always-valid interval, safe to look at every day; ``significant`` is decided by it alone.
    """
    mc, mt = control.mean, treatment.mean
    diff = mt - mc if mc is not None and mt is not None else None
    relative = diff / mc if diff is not None and mc else None
    vc, vt = control.variance_of_mean(), treatment.variance_of_mean()
    if diff is None or vc is None or vt is None:
        return _degenerate(diff, relative, TOO_FEW_UNITS)
    var = vc + vt
    if var <= 0:
        return _degenerate(diff, relative, ZERO_VARIANCE)
    se = math.sqrt(var)
    dof = var**2 / (vc**2 / (control.units - 1) + vt**2 / (treatment.units - 1))
    p_value = float(2 * sps.t.sf(abs(diff) / se, dof))
    crit = float(sps.t.ppf(1 - alpha / 2, dof))
    seq = _sequential_half_width(var, control.units + treatment.units, tuning=sequential_tuning, alpha=alpha)
    lo, hi = diff - seq, diff + seq
    return Comparison(
        diff=diff,
        ci95=(diff - crit * se, diff + crit * se),
        p_value=p_value,
        test=TEST_NAME,
        sequential_ci95=(lo, hi),
        significant=lo > 0 or hi < 0,
        relative=relative,
    )


@dataclass(frozen=True)
class SRMResult:
    p_value: float
    flagged: bool


def srm_check(counts: Sequence[int], weights: Sequence[float], *, threshold: float = 0.001) -> SRMResult:
    """Sample ratio mismatch: chi-squared goodness of fit of units per arm against the configured weights.

    A mismatch means assignment or logging is broken, so no metric of the experiment can be trusted.
    GrowthBook flags at p < 0.001: strict, because the check runs on every experiment every day.
    """
    if len(counts) != len(weights) or len(counts) < 2:
        raise ValueError("need one weight per arm and at least two arms")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w <= 0):
        raise ValueError("weights must be positive")
    observed = np.asarray(counts, dtype=np.float64)
    total = observed.sum()
    if total <= 0:
        return SRMResult(p_value=1.0, flagged=False)
    expected = total * w / w.sum()
    p_value = float(sps.chisquare(observed, expected).pvalue)
    return SRMResult(p_value=p_value, flagged=p_value < threshold)


def guardrail_breached(
    control: ArmSample,
    treatment: ArmSample,
    *,
    max_increase: float | None = None,
    max_ratio: float | None = None,
    sequential_tuning: float = 5000.0,
    alpha: float = 0.05,
) -> bool:
    """True when treatment is worse (higher) than control beyond a bound, with always-valid significance.

    ``max_increase`` d: the sequential lower bound of (treatment - control) exceeds d.
    ``max_ratio`` r: the sequential lower bound of (treatment - r * control) exceeds 0, i.e.
    treatment > r * control; the linear combination has delta-method variance v_t + r^2 v_c, which avoids
    the ratio of two noisy means. With both bounds, either one breaching is enough. Degenerate data
    (too few units, zero variance) never breaches: there is no evidence.
    """
    if max_increase is None and max_ratio is None:
        raise ValueError("give max_increase, max_ratio or both")
    mc, mt = control.mean, treatment.mean
    vc, vt = control.variance_of_mean(), treatment.variance_of_mean()
    if mc is None or mt is None or vc is None or vt is None:
        return False
    n = control.units + treatment.units
    bounds = []
    if max_increase is not None:
        bounds.append((mt - mc - max_increase, vt + vc))
    if max_ratio is not None:
        bounds.append((mt - max_ratio * mc, vt + max_ratio**2 * vc))
    return any(
        var > 0 and est - _sequential_half_width(var, n, tuning=sequential_tuning, alpha=alpha) > 0
        for est, var in bounds
    )


def quantile_breached(
    control_values: Sequence[float],
    treatment_values: Sequence[float],
    *,
    q: float = 0.95,
    max_ratio: float,
    sequential_tuning: float = 5000.0,
    alpha: float = 0.05,
) -> bool:
    """True when treatment's q-quantile exceeds control's q-quantile * max_ratio, with sequential evidence.

    With T = quantile_q(control) * max_ratio, treatment's q-quantile > T iff the share p of treatment
    values above T exceeds 1 - q. So we test that share with a one-sample always-valid bound: breached
    when p_hat - halfwidth > 1 - q. The half-width uses the variance under the boundary p0 = 1 - q,
    p0 (1 - p0) / n (score-test style), so it never collapses to 0 when p_hat is 0 or 1 on a few units.
    Simplification: T is treated as fixed, ignoring the control quantile's own noise; fine when control
    holds many values (it gets most traffic), slightly anti-conservative when it does not.
    Each value is one answer's latency; answers of one unit are correlated, which this ignores too.
    """
    if not 0 < q < 1 or max_ratio <= 0:
        raise ValueError("need 0 < q < 1 and max_ratio > 0")
    ctl = np.asarray(control_values, dtype=np.float64)
    trt = np.asarray(treatment_values, dtype=np.float64)
    if ctl.size < 2 or trt.size < 2:
        return False
    threshold = float(np.quantile(ctl, q)) * max_ratio
    n = int(trt.size)
    share = float(np.mean(trt > threshold))
    p0 = 1 - q
    half = _sequential_half_width(p0 * (1 - p0) / n, n, tuning=sequential_tuning, alpha=alpha)
    return share - half > p0
