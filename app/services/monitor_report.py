"""`ragserver monitor report`: live quality over time from the response traces, as `summary.json` and a
self-contained `report.html` (plots inlined as PNG; every string escaped).

Per time bucket (hours when the period is under two days, else days): volume, latency (p50/p95 total and
time to first token), thumbs-up rate (up among rated), feedback rate (answers with any feedback),
engagement (events per answer), no-answer rate, the retrieval top score, and online judge scores; the
same overall figures split by collection, prompt and model. Drift: the top-score distribution of the
period's second half against its first (mean shift and the two-sample Kolmogorov-Smirnov statistic).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment

from app.traces.store import Trace
from ingest.vector_index import split_store_name


def _quantile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 3) if values else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def answered_by(trace: Trace) -> str:
    """Who answered a traced request: `llm`, or the routing stage (`rule`, `curated`, `refused`)."""
    return str((trace.params.get("routing") or {}).get("answered_by") or "llm")


def figures(traces: Sequence[Trace]) -> dict[str, Any]:
    """The figures of a group of traces."""
    total = [t.latency_ms.get("total") for t in traces if t.latency_ms.get("total") is not None]
    ttft = [t.latency_ms.get("ttft") for t in traces if t.latency_ms.get("ttft") is not None]
    ratings = [f.rating for t in traces for f in t.feedback if f.rating]
    top = [max(c["score"] for c in t.chunks) for t in traces if t.chunks]
    judged = [t.judge for t in traces if t.judge]
    events: dict[str, int] = defaultdict(int)
    for t in traces:
        for kind, n in t.events.items():
            events[kind] += n
    n = len(traces)
    return {
        "answers": n,
        "latency_ms": {
            "p50": _quantile(total, 0.5),  # type: ignore[arg-type]
            "p95": _quantile(total, 0.95),  # type: ignore[arg-type]
            "ttft_p50": _quantile(ttft, 0.5),  # type: ignore[arg-type]
        },
        "thumbs_up_rate": round(ratings.count("up") / len(ratings), 4) if ratings else None,
        "ratings": {"up": ratings.count("up"), "down": ratings.count("down")},
        "feedback_rate": round(sum(1 for t in traces if t.feedback) / n, 4) if n else None,
        "engagement_per_answer": {k: round(v / n, 4) for k, v in sorted(events.items())} if n else {},
        "abstained_rate": round(sum(t.outcome == "abstained" for t in traces) / n, 4) if n else None,
        "outcomes": dict(
            sorted(
                defaultdict(
                    int, {o: sum(t.outcome == o for t in traces) for o in {t.outcome for t in traces}}
                ).items()
            )
        ),
        "retrieval_top_score": {"mean": _mean(top), "p10": _quantile(top, 0.1), "p50": _quantile(top, 0.5)},
        "judge": {
            name: _mean(j.get(name) for j in judged) for name in sorted({k for j in judged for k in j})
        },
        "judged": len(judged),
    }


def _ks(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic (max gap between the empirical CDFs)."""
    if not a or not b:
        return None
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return round(float(np.max(np.abs(cdf_a - cdf_b))), 4)


def build_summary(
    traces: Sequence[Trace], *, since: float | None, now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    traces = sorted(traces, key=lambda t: t.created_at)
    start = since if since is not None else (traces[0].created_at if traces else now)
    bucket_s = 3600 if now - start < 2 * 86400 else 86400
    buckets: dict[int, list[Trace]] = defaultdict(list)
    for t in traces:
        buckets[int(t.created_at // bucket_s * bucket_s)].append(t)
    splits: dict[str, dict[str, list[Trace]]] = {
        "collection": defaultdict(list),
        "prompt": defaultdict(list),
        "model": defaultdict(list),
        # Who answered: the LLM, or a stage of the routing chain (rule, curated, refused).
        "answered_by": defaultdict(list),
    }
    for t in traces:
        splits["collection"][
            split_store_name(t.collection)[1] if "." in t.collection else t.collection
        ].append(t)
        splits["prompt"][t.prompt].append(t)
        splits["model"][t.model].append(t)
        splits["answered_by"][answered_by(t)].append(t)
    middle = start + (now - start) / 2
    first = [max(c["score"] for c in t.chunks) for t in traces if t.chunks and t.created_at < middle]
    second = [max(c["score"] for c in t.chunks) for t in traces if t.chunks and t.created_at >= middle]
    return {
        "period": {"since": start, "until": now, "bucket_s": bucket_s},
        "overall": figures(traces),
        "over_time": [{"start": b, **figures(group)} for b, group in sorted(buckets.items())],
        "by": {
            name: {key: figures(group) for key, group in sorted(groups.items())}
            for name, groups in splits.items()
        },
        "top_score_drift": {
            "first_half_mean": _mean(first),
            "second_half_mean": _mean(second),
            "mean_shift": round(float(np.mean(second) - np.mean(first)), 4) if first and second else None,
            "ks_statistic": _ks(first, second),
            "first_half_n": len(first),
            "second_half_n": len(second),
        },
    }


def _plots(summary: dict[str, Any], traces: Sequence[Trace]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig: Any) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    rows = summary["over_time"]
    if not rows:
        return {}
    fmt = "%m-%d %H:00" if summary["period"]["bucket_s"] == 3600 else "%Y-%m-%d"
    labels = [time.strftime(fmt, time.gmtime(r["start"])) for r in rows]
    x = np.arange(len(rows))
    series = {
        "Volume (answers)": [r["answers"] for r in rows],
        "Latency p50 / p95 (ms)": (
            [r["latency_ms"]["p50"] for r in rows],
            [r["latency_ms"]["p95"] for r in rows],
        ),
        "Thumbs-up rate": [r["thumbs_up_rate"] for r in rows],
        "Feedback rate": [r["feedback_rate"] for r in rows],
        "Abstained rate": [r["abstained_rate"] for r in rows],
        "Engagement events per answer": [sum(r["engagement_per_answer"].values()) for r in rows],
    }
    out: dict[str, str] = {}
    for title, values in series.items():
        fig, ax = plt.subplots(figsize=(7, 2.4))
        lines = values if isinstance(values, tuple) else (values,)
        for line in lines:
            ax.plot(x, [np.nan if v is None else v for v in line], marker="o")
        ax.set_title(title)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        out[title] = png(fig)
    judges = sorted({k for r in rows for k in r["judge"]})
    if judges:
        fig, ax = plt.subplots(figsize=(7, 2.4))
        for name in judges:
            ax.plot(
                x,
                [np.nan if r["judge"].get(name) is None else r["judge"][name] for r in rows],
                marker="o",
                label=name,
            )
        ax.set_title("Online judge scores")
        ax.legend(fontsize=7)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        out["Online judge scores"] = png(fig)
    tops = [max(c["score"] for c in t.chunks) for t in traces if t.chunks]
    if tops:
        middle = summary["period"]["since"] + (summary["period"]["until"] - summary["period"]["since"]) / 2
        first = [max(c["score"] for c in t.chunks) for t in traces if t.chunks and t.created_at < middle]
        second = [max(c["score"] for c in t.chunks) for t in traces if t.chunks and t.created_at >= middle]
        fig, ax = plt.subplots(figsize=(7, 2.4))
        bins = [float(b) for b in np.histogram_bin_edges(tops, bins=20)]
        if first:
            ax.hist(first, bins=bins, alpha=0.6, label="first half")
        if second:
            ax.hist(second, bins=bins, alpha=0.6, label="second half")
        ax.set_title("Retrieval top score: distribution and drift")
        ax.legend(fontsize=7)
        out["Retrieval top score"] = png(fig)
    return out


_TEMPLATE = Path(__file__).with_name("templates") / "monitor_report.html.j2"


def write_report(
    traces: Sequence[Trace], out: Path, *, since: float | None, now: float | None = None
) -> dict[str, Any]:
    """Write `summary.json` and `report.html` under `out`; the summary."""
    summary = build_summary(traces, since=since, now=now)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    period = summary["period"]
    shown = " to ".join(
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(period[k])) for k in ("since", "until")
    )
    template = Environment(autoescape=True).from_string(_TEMPLATE.read_text(encoding="utf-8"))
    html = template.render(s=summary, plots=_plots(summary, traces), period=shown)
    (out / "report.html").write_text(html, encoding="utf-8")
    return summary
