"""An experiment's report from its answers' traces: metrics per arm, comparisons with control, the
sample-ratio-mismatch check, guardrails, and the primary metric over time.

Units (conversations or keys) are the observations: every metric is a ratio of sums over an arm's units
(`app/experiments/stats.py`, delta method). Rates are per answer (thumbs-up rate = answers rated up /
answers), so a unit with ten answers weighs ten times one with one, and their correlation widens the
interval instead of being ignored. Latency quantiles are descriptive; their guardrail is a quantile test.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.experiments.spec import METRICS, ExperimentSpec
from app.experiments.stats import ArmSample, compare, guardrail_breached, quantile_breached, srm_check
from app.experiments.store import Experiment
from app.services.monitor_report import answered_by
from app.traces.store import Trace

NO_ANSWER = ("abstained", "refused")
QUANTILES = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95}


@dataclass
class _Unit:
    """One unit's sums (numerator per metric, and the denominators)."""

    requests: int = 0
    answers: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # scored answers per metric


def _add(unit: _Unit, t: Trace) -> None:
    unit.requests += 1
    if t.outcome == "error":
        unit.sums["error_rate"] += 1
        return
    unit.answers += 1
    s = unit.sums
    ratings = {f.rating for f in t.feedback}
    s["thumbs_up_rate"] += "up" in ratings
    s["thumbs_down_rate"] += "down" in ratings
    s["feedback_rate"] += bool(t.feedback)
    s["citation_ctr"] += t.events.get("citation_opened", 0) > 0
    s["copy_rate"] += t.events.get("copied", 0) > 0
    s["regenerate_rate"] += t.events.get("regenerated", 0) > 0
    s["no_answer_rate"] += t.outcome in NO_ANSWER
    s["latency_ms"] += t.latency_ms.get("total") or 0.0
    s["tokens_per_answer"] += sum(t.usage.values())
    s["cost_per_answer"] += t.cost or 0.0
    scored = {"grounding_score": t.grounding}
    if t.judge:
        scored |= {
            "judge_faithfulness": t.judge.get("faithfulness"),
            "judge_relevancy": t.judge.get("answer_relevancy"),
        }
    for name, value in scored.items():
        if value is not None:
            s[name] += float(value)
            unit.counts[name] += 1


def _denominator(unit: _Unit, metric: str) -> float:
    if metric == "error_rate":
        return unit.requests
    if metric in ("grounding_score", "judge_faithfulness", "judge_relevancy"):
        return unit.counts[metric]
    return unit.answers


def _sample(units: Sequence[_Unit], metric: str) -> ArmSample:
    pairs = [(u.sums[metric], _denominator(u, metric)) for u in units]
    return ArmSample.from_units((n, d) for n, d in pairs if d > 0)


def _latencies(traces: Sequence[Trace]) -> list[float]:
    found = (t.latency_ms.get("total") for t in traces if t.outcome != "error")
    return [float(v) for v in found if v]


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


@dataclass
class _Arm:
    traces: list[Trace] = field(default_factory=list)
    units: dict[str, _Unit] = field(default_factory=dict)

    def add(self, t: Trace) -> None:
        self.traces.append(t)
        _add(self.units.setdefault(t.unit or t.response_id, _Unit()), t)

    def metrics(self) -> dict[str, Any]:
        units = list(self.units.values())
        out: dict[str, Any] = {
            "units": len(units),
            "answers": sum(u.answers for u in units),
            "requests": sum(u.requests for u in units),
        }
        answered = [t for t in self.traces if t.outcome != "error"]
        if answered:  # the share each routing stage answered (llm, rule, curated, refused)
            kinds = [answered_by(t) for t in answered]
            out["answered_by"] = {k: round(kinds.count(k) / len(kinds), 4) for k in sorted(set(kinds))}
        latencies = _latencies(self.traces)
        for metric in METRICS:
            if metric in QUANTILES:
                value = float(np.quantile(latencies, QUANTILES[metric])) if latencies else None
                out[metric] = _round(value, 1)
            else:
                out[metric] = _round(_sample(units, metric).mean, 6)
        return out


def _arms(spec: ExperimentSpec, traces: Sequence[Trace]) -> dict[str, _Arm]:
    arms = {a.name: _Arm() for a in spec.arms}
    for t in sorted(traces, key=lambda t: t.created_at):
        if t.arm in arms:
            arms[t.arm].add(t)
    return arms


def _comparisons(spec: ExperimentSpec, arms: dict[str, _Arm]) -> dict[str, dict[str, Any]]:
    control = list(arms[spec.control.name].units.values())
    out: dict[str, dict[str, Any]] = {}
    for arm in spec.arms:
        if arm.name == spec.control.name:
            continue
        treated = list(arms[arm.name].units.values())
        rows: dict[str, Any] = {}
        for metric in METRICS:
            if metric in QUANTILES:
                a, b = _latencies(arms[spec.control.name].traces), _latencies(arms[arm.name].traces)
                diff = (
                    float(np.quantile(b, QUANTILES[metric]) - np.quantile(a, QUANTILES[metric]))
                    if a and b
                    else None
                )
                rows[metric] = {
                    "diff": _round(diff, 1),
                    "ci95": None,
                    "p_value": None,
                    "test": "descriptive (its guardrail is a sequential quantile test)",
                }
                continue
            rows[metric] = compare(_sample(control, metric), _sample(treated, metric)).to_dict()
        out[arm.name] = rows
    return out


def guardrail_verdicts(spec: ExperimentSpec, traces: Sequence[Trace], *, min_units: int) -> dict[str, str]:
    """The arms a guardrail stops: {arm: why}. An arm with fewer than `min_units` units is not judged."""
    arms = _arms(spec, traces)
    control = arms[spec.control.name]
    stopped: dict[str, str] = {}
    for arm in spec.arms:
        if arm.name == spec.control.name or len(arms[arm.name].units) < min_units:
            continue
        treated = arms[arm.name]
        for g in spec.guardrails:
            if g.metric in QUANTILES:
                assert g.max_ratio is not None  # the spec requires it for a quantile
                breached = quantile_breached(
                    _latencies(control.traces),
                    _latencies(treated.traces),
                    q=QUANTILES[g.metric],
                    max_ratio=g.max_ratio,
                )
            else:
                breached = guardrail_breached(
                    _sample(list(control.units.values()), g.metric),
                    _sample(list(treated.units.values()), g.metric),
                    max_increase=g.max_increase,
                    max_ratio=g.max_ratio,
                )
            if breached:
                bound = (
                    f"max_increase {g.max_increase}"
                    if g.max_increase is not None
                    else f"max_ratio {g.max_ratio}"
                )
                stopped[arm.name] = f"guardrail {g.metric} ({bound}) breached against {spec.control.name}"
                break
    return stopped


def _over_time(spec: ExperimentSpec, traces: Sequence[Trace]) -> list[dict[str, Any]]:
    """The primary metric per arm, cumulative, at the end of each day (hour when under two days), with
    the sequential interval of its difference to control: what a daily look saw."""
    if not traces:
        return []
    first, last = min(t.created_at for t in traces), max(t.created_at for t in traces)
    step = 3600.0 if last - first < 2 * 86400 else 86400.0
    metric = spec.primary_metric
    points = []
    edge = first - first % step + step
    while True:
        seen = [t for t in traces if t.created_at < edge]
        arms = _arms(spec, seen)
        control = list(arms[spec.control.name].units.values())
        row: dict[str, Any] = {"at": edge, "arms": {}}
        for arm in spec.arms:
            units = list(arms[arm.name].units.values())
            entry: dict[str, Any] = {"units": len(units)}
            if metric in QUANTILES:
                lat = _latencies(arms[arm.name].traces)
                entry["value"] = _round(float(np.quantile(lat, QUANTILES[metric])), 1) if lat else None
            else:
                entry["value"] = _round(_sample(units, metric).mean, 6)
                if arm.name != spec.control.name:
                    entry["vs_control"] = compare(_sample(control, metric), _sample(units, metric)).to_dict()
            row["arms"][arm.name] = entry
        points.append(row)
        if edge > last or len(points) >= 400:
            break
        edge += step
    return points


def build_report(
    experiment: Experiment, traces: Sequence[Trace], *, now: Callable[[], float] = time.time
) -> dict[str, Any]:
    """The report `ragserver experiments report` prints as its last line (and `report.html` shows)."""
    spec = experiment.spec
    arms = _arms(spec, traces)
    srm = srm_check([len(arms[a.name].units) for a in spec.arms], [a.weight for a in spec.arms])
    return {
        "experiment": spec.name,
        "status": experiment.status,
        "collections": spec.collections,
        "unit": spec.unit,
        "control": spec.control.name,
        "primary_metric": spec.primary_metric,
        "generated_at": now(),
        "arms": {a.name: {"weight": a.weight, **arms[a.name].metrics()} for a in spec.arms},
        "comparisons": _comparisons(spec, arms),
        "srm": {"p_value": _round(srm.p_value, 6), "flagged": srm.flagged},
        "stopped_arms": sorted(experiment.stopped_arms),
        "stopped_reasons": experiment.stopped_arms,
        "over_time": _over_time(spec, traces),
    }
