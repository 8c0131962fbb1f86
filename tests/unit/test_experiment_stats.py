"""A/B statistics engine: real effects are found, A/A tests flag ~5%, daily peeking is safe only with the
sequential interval, SRM, ratio metrics by the delta method, guardrails, and degenerate inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binom

from app.experiments.stats import (
    TEST_NAME,
    TOO_FEW_UNITS,
    ZERO_VARIANCE,
    ArmSample,
    Comparison,
    compare,
    guardrail_breached,
    quantile_breached,
    srm_check,
)

pytestmark = pytest.mark.unit

N_SIM = 200
# 99.9% binomial interval for the number of false positives out of 200 at a true rate of 5%: (2, 21).
FP_LO, FP_HI = (int(x) for x in binom.interval(0.999, N_SIM, 0.05))


def _props(values: np.ndarray) -> ArmSample:
    """One answer per unit: a proportion is a ratio metric with denominator 1."""
    return ArmSample(values.astype(float), np.ones(len(values)))


def _json_safe(c: Comparison) -> dict[str, object]:
    out = c.to_dict()
    json.dumps(out, allow_nan=False)
    assert set(out) == {"diff", "ci95", "p_value", "test", "sequential_ci95", "significant", "relative"}
    return out


def test_real_effect_is_detected() -> None:
    rng = np.random.default_rng(1)
    control = _props(rng.binomial(1, 0.55, 2000))
    treatment = _props(rng.binomial(1, 0.65, 2000))
    c = compare(control, treatment)
    assert c.test == TEST_NAME
    assert c.p_value is not None and c.p_value < 0.05
    assert c.ci95 is not None and c.ci95[0] > 0
    assert c.sequential_ci95 is not None and c.sequential_ci95[0] > 0
    assert c.significant
    assert c.diff == pytest.approx(0.10, abs=0.03)
    assert c.relative == pytest.approx(c.diff / control.mean)
    # The always-valid interval pays for peeking with width: it contains the fixed one.
    assert c.sequential_ci95[0] < c.ci95[0] and c.sequential_ci95[1] > c.ci95[1]
    out = _json_safe(c)
    assert out["significant"] is True and out["ci95"][0] > 0


def test_aa_experiments_flag_about_five_percent() -> None:
    rng = np.random.default_rng(2)
    data = rng.binomial(1, 0.6, size=(N_SIM, 2, 1000))
    results = [compare(_props(d[0]), _props(d[1])) for d in data]
    flagged = sum(r.p_value is not None and r.p_value < 0.05 for r in results)
    assert FP_LO <= flagged <= FP_HI
    # The fixed interval and the p-value agree on every experiment.
    for r in results:
        assert r.ci95 is not None and r.p_value is not None
        assert (r.ci95[0] > 0 or r.ci95[1] < 0) == (r.p_value < 0.05)


def test_srm_check() -> None:
    assert srm_check([4500, 5500], [0.5, 0.5]).flagged
    ok = srm_check([5010, 4990], [0.5, 0.5])
    assert not ok.flagged and ok.p_value > 0.5
    # Weights need not sum to 1; a 10/90 experiment that gets 10/90 is fine.
    assert not srm_check([1000, 9000], [1, 9]).flagged
    assert srm_check([0, 0], [0.5, 0.5]).p_value == 1.0
    assert not srm_check([0, 0], [0.5, 0.5]).flagged
    with pytest.raises(ValueError):
        srm_check([1, 2], [1.0])


def test_daily_peeking_is_safe_with_sequential_interval_only() -> None:
    rng = np.random.default_rng(3)
    days, per_day = 14, 100
    daily = rng.binomial(1, 0.6, size=(N_SIM, 2, days * per_day))
    seq_fp = fixed_fp = 0
    for exp in daily:
        seq_hit = fixed_hit = False
        for day in range(1, days + 1):
            n = day * per_day  # cumulative data up to this look
            c = compare(_props(exp[0, :n]), _props(exp[1, :n]))
            assert c.ci95 is not None and c.sequential_ci95 is not None
            fixed_hit |= c.ci95[0] > 0 or c.ci95[1] < 0
            seq_hit |= c.significant
        seq_fp += seq_hit
        fixed_fp += fixed_hit
    assert seq_fp <= FP_HI
    # Peeking at the fixed-horizon interval every day inflates false positives well above 5%.
    assert fixed_fp > FP_HI


def test_delta_method_variance_hand_computed() -> None:
    # Units (num, den): R = 6/6 = 1, dbar = 1.5, residuals m - R d = 0, 0, -1, 1 -> s^2 = 2/3.
    # Var(R) = s^2 / (n dbar^2) = (2/3) / (4 * 9/4) = 2/27.
    arm = ArmSample.from_units([(1, 1), (2, 2), (0, 1), (3, 2)])
    assert (arm.units, arm.total, arm.count, arm.mean) == (4, 6.0, 6.0, 1.0)
    assert arm.variance_of_mean() == pytest.approx(2 / 27)
    # Denominator 1 everywhere: the usual s^2 / n.
    ones = ArmSample.from_units([(1, 1), (0, 1), (1, 1), (1, 1)])
    assert ones.variance_of_mean() == pytest.approx(np.var([1, 0, 1, 1], ddof=1) / 4)


def test_delta_method_matches_bootstrap_with_correlated_answers() -> None:
    rng = np.random.default_rng(4)
    units = 500
    answers = rng.poisson(2.0, units) + 1
    propensity = rng.beta(0.5, 0.5, units)  # answers within a unit are correlated
    thumbs = rng.binomial(answers, propensity)
    arm = ArmSample(thumbs.astype(float), answers.astype(float))
    idx = rng.integers(0, units, size=(4000, units))
    boot = thumbs[idx].sum(axis=1) / answers[idx].sum(axis=1)
    delta_se = np.sqrt(arm.variance_of_mean())
    assert delta_se == pytest.approx(boot.std(ddof=1), rel=0.08)
    # Treating answers as independent (binomial SE on all answers) would understate the noise.
    p = arm.mean
    assert np.sqrt(p * (1 - p) / arm.count) < 0.85 * delta_se


def _latency(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return scale * rng.lognormal(np.log(800.0), 0.5, n)


def test_latency_guardrails() -> None:
    rng = np.random.default_rng(5)
    control = _latency(rng, 1500, 1.0)
    slow = _latency(rng, 1500, 2.0)
    same = _latency(rng, 1500, 1.0)
    assert quantile_breached(control, slow, max_ratio=1.5)
    assert guardrail_breached(_props(control), _props(slow), max_ratio=1.5)
    assert not quantile_breached(control, same, max_ratio=1.5)
    assert not guardrail_breached(_props(control), _props(same), max_ratio=1.5)
    # 2x slower is within a 2.5x budget.
    assert not quantile_breached(control, slow, max_ratio=2.5)
    assert not guardrail_breached(_props(control), _props(slow), max_ratio=2.5)


def test_error_rate_guardrail() -> None:
    rng = np.random.default_rng(6)
    control = _props(rng.binomial(1, 0.02, 2000))
    assert guardrail_breached(control, _props(rng.binomial(1, 0.10, 2000)), max_increase=0.02)
    assert not guardrail_breached(control, _props(rng.binomial(1, 0.025, 2000)), max_increase=0.02)
    with pytest.raises(ValueError):
        guardrail_breached(control, control)


@pytest.mark.parametrize(
    ("control", "treatment", "test"),
    [
        (ArmSample([], []), ArmSample([], []), TOO_FEW_UNITS),
        (ArmSample([1.0], [1.0]), ArmSample([0.0, 1.0], [1.0, 1.0]), TOO_FEW_UNITS),
        (ArmSample([0.0, 0.0], [0.0, 0.0]), ArmSample([1.0, 0.0], [1.0, 1.0]), TOO_FEW_UNITS),
        (ArmSample([1.0] * 5, [1.0] * 5), ArmSample([1.0] * 5, [1.0] * 5), ZERO_VARIANCE),
        (ArmSample([0.0] * 5, [1.0] * 5), ArmSample([1.0] * 5, [1.0] * 5), ZERO_VARIANCE),
    ],
)
def test_degenerate_inputs_are_json_safe(control: ArmSample, treatment: ArmSample, test: str) -> None:
    c = compare(control, treatment)
    assert c.test == test
    assert c.p_value is None and c.ci95 is None and c.sequential_ci95 is None
    assert not c.significant
    out = _json_safe(c)
    assert out["p_value"] is None and out["significant"] is False
    assert not guardrail_breached(control, treatment, max_increase=0.0, max_ratio=1.0)
    assert not quantile_breached(list(control.numerators), list(treatment.numerators), max_ratio=1.0)


def test_degenerate_details() -> None:
    empty = ArmSample.from_units([])
    assert empty.mean is None and empty.variance_of_mean() is None
    assert ArmSample([1.0], [2.0]).variance_of_mean() is None
    # Zero-variance arms still report the difference; control mean 0 gives no relative change.
    c = compare(ArmSample([0.0] * 5, [1.0] * 5), ArmSample([1.0] * 5, [1.0] * 5))
    assert c.diff == 1.0 and c.relative is None
    with pytest.raises(ValueError):
        ArmSample([1.0, 2.0], [1.0])
