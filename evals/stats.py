"""Means with bootstrap confidence intervals, and paired deltas between two runs.

Percentile bootstrap from scipy (`scipy.stats.bootstrap`), seeded, so a report shows the same interval
every time it is rendered from the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0


@dataclass
class Estimate:
    """A mean over `n` values with a bootstrap confidence interval (None when n < 2)."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def clean(values: Sequence[float | None]) -> list[float]:
    """The values that were computed (None and NaN dropped)."""
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def bootstrap_mean(
    values: Sequence[float | None],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """Mean of the computed values and its percentile-bootstrap confidence interval."""
    data = np.asarray(clean(values), dtype=np.float64)
    if data.size == 0:
        return Estimate(None, None, None, 0)
    mean = float(data.mean())
    if data.size < 2:
        return Estimate(mean, None, None, 1)
    if np.all(data == data[0]):  # no spread: every resample has the same mean
        return Estimate(mean, mean, mean, int(data.size))
    from scipy.stats import bootstrap

    result = bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return Estimate(mean, float(ci.low), float(ci.high), int(data.size))


@dataclass
class PairedDelta:
    """Mean of (b - a) over the questions both runs scored, with a bootstrap CI.

    `p_not_better` is the share of resamples whose mean delta is <= 0 (small: b is reliably higher), or
    >= 0 for a metric where lower is better (small: b is reliably lower).
    """

    metric: str
    mean_a: float | None
    mean_b: float | None
    delta: Estimate
    p_not_better: float | None

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        d = self.delta
        return d.ci_low is not None and d.ci_high is not None and (d.ci_low > 0 or d.ci_high < 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "mean_a": None if self.mean_a is None else round(self.mean_a, 6),
            "mean_b": None if self.mean_b is None else round(self.mean_b, 6),
            "delta": self.delta.to_dict(),
            "p_not_better": None if self.p_not_better is None else round(self.p_not_better, 4),
            "significant": self.significant,
        }


def paired_delta(
    metric: str,
    a: dict[str, float | None],
    b: dict[str, float | None],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    higher_is_better: bool = True,
) -> PairedDelta:
    """Paired bootstrap of b - a over question ids scored in both runs (a dict question id -> score)."""
    ids = [q for q in a if q in b and clean([a[q]]) and clean([b[q]])]
    xa = np.asarray([a[q] for q in ids], dtype=np.float64)
    xb = np.asarray([b[q] for q in ids], dtype=np.float64)
    diff = xb - xa
    delta = bootstrap_mean(diff.tolist(), confidence=confidence, n_resamples=n_resamples, seed=seed)
    p = None
    if diff.size >= 2:
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, diff.size, size=(n_resamples, diff.size))].mean(axis=1)
        p = float(np.mean(means <= 0 if higher_is_better else means >= 0))
    return PairedDelta(
        metric,
        float(xa.mean()) if ids else None,
        float(xb.mean()) if ids else None,
        delta,
        p,
    )


def percentile(values: Sequence[float], q: float, digits: int | None = None) -> float | None:
    """The q-th percentile (0-100) of `values`, rounded to `digits` when given; None for no values."""
    if not len(values):
        return None
    value = float(np.percentile(np.asarray(values, dtype=np.float64), q))
    return value if digits is None else round(value, digits)
