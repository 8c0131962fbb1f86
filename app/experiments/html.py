"""An experiment report as one self-contained page (`report.html`): the arms' metrics, the comparisons
with control and their intervals, the sample-ratio-mismatch check, stopped arms, and the primary metric
per arm over time with the always-valid interval of its difference to control (the plot inlined as PNG;
every string escaped)."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment

_TEMPLATE = Path(__file__).with_name("report.html.j2")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pair(pair: Any) -> str:
    return "-" if not pair else f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def _plot(report: dict[str, Any]) -> str | None:
    points = report.get("over_time") or []
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    xs = [time.strftime("%m-%d %H:%M", time.gmtime(p["at"])) for p in points]
    for arm in report["arms"]:
        top.plot(xs, [p["arms"][arm].get("value") for p in points], marker="o", label=arm)
        if arm == report["control"]:
            continue
        seq = [(p["arms"][arm].get("vs_control") or {}).get("sequential_ci95") for p in points]
        diffs = [(p["arms"][arm].get("vs_control") or {}).get("diff") for p in points]
        lo = [s[0] if s else None for s in seq]
        hi = [s[1] if s else None for s in seq]
        bottom.plot(xs, diffs, marker="o", label=f"{arm} - {report['control']}")
        bottom.fill_between(
            xs,
            [v if v is not None else float("nan") for v in lo],
            [v if v is not None else float("nan") for v in hi],
            alpha=0.2,
        )
    bottom.axhline(0, color="#888", linewidth=0.8)
    top.set_title(report["primary_metric"] + " per arm (cumulative)")
    bottom.set_title("difference to control, always-valid 95% interval")
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    bottom.tick_params(axis="x", rotation=30, labelsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(report: dict[str, Any]) -> str:
    """The page for `report` (what `build_report` returns)."""
    from app.experiments.spec import METRICS

    arms = list(report["arms"])
    metrics = ["units", "answers", "requests", *METRICS]
    template = Environment(autoescape=True).from_string(_TEMPLATE.read_text(encoding="utf-8"))
    return template.render(
        r=report,
        arms=arms,
        metrics=metrics,
        fmt=_fmt,
        pair=_pair,
        better=lambda metric, diff: diff is not None and (diff > 0) == METRICS.get(metric, True),
        plot=_plot(report),
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report.get("generated_at", time.time()))),
    )
