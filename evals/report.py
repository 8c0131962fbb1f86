"""report.html for a run and compare.html for two runs: one self-contained file each.

Plots are matplotlib (Agg) PNGs inlined as base64 data URIs and the styling is inline, so the files open
in a browser with no network access. Every dataset string is HTML-escaped (jinja2 autoescape).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from typing import Any

from jinja2 import Environment

from evals.rag_metrics import METRICS

_DESCRIPTIONS = {m.name: m.description for m in METRICS}
_GROUPS = {m.name: m.group for m in METRICS}
# The metric that ranks "worst questions": the first one the run computed.
_RANKING = ("answer_similarity", "faithfulness", "token_f1", "answer_relevancy", "hit_rate")
WORST = 10
CONTEXT_CHARS = 1200
# Answers listed with the facts their sources lack.
FLAGGED = 25

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
  color:#1d1d1f;padding:0 1rem}
h1{font-size:1.5rem}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #eee;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}.good{color:#0a7d32;font-weight:600}.bad{color:#b3261e;font-weight:600}
img{max-width:100%}details{margin:.4rem 0}summary{cursor:pointer}
.ctx{background:#fafafa;border-left:3px solid #ccc;padding:.3rem .6rem;margin:.3rem 0;white-space:pre-wrap;
  font-size:.85rem}
.gold{border-left-color:#0a7d32}.q{margin:1rem 0;padding:.5rem;border:1px solid #eee}
code{background:#f3f3f3;padding:0 .2rem}
"""

_REPORT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RAG eval: {{ title }}</title>
<style>{{ style }}</style></head><body>
<h1>RAG eval: {{ title }}</h1>
<table>
{% for k, v in info %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>{% endfor %}
</table>

<h2>Metrics</h2>
<p class="muted">Mean over the questions where a metric was computed, with a 95% percentile-bootstrap
confidence interval. A metric that could not be computed is shown as not computed, never as a number.</p>
<table><tr><th>metric</th><th>group</th><th>mean</th><th>95% CI</th><th>n</th><th>not computed</th>
<th>errors</th><th>what it measures</th></tr>
{% for name, m in metrics %}
<tr><td>{{ name }}</td><td>{{ groups.get(name, "") }}</td>
{% if m.mean is none %}
<td colspan="2" class="muted">{{ m.note }}</td>
{% else %}
<td class="num">{{ m.mean|f4 }}</td>
<td class="num">{% if m.ci_low is not none %}{{ m.ci_low|f4 }} – {{ m.ci_high|f4 }}{% endif %}</td>
{% endif %}
<td class="num">{{ m.n }}</td><td class="num">{{ m.not_computed }}</td><td class="num">{{ m.errors }}</td>
<td class="muted">{{ descriptions.get(name, "") }}</td></tr>
{% endfor %}
</table>

{% if means_png %}
<h2>Per-metric means (95% CI)</h2><img alt="means" src="data:image/png;base64,{{ means_png }}">
{% endif %}
{% if dist_png %}
<h2>Score distributions</h2><img alt="distributions" src="data:image/png;base64,{{ dist_png }}">
{% endif %}

{% if worst %}
<h2>Worst {{ worst|length }} questions by {{ ranking }}</h2>
{% for r in worst %}
<div class="q"><b>{{ r.id }}</b>: {{ r.question }}<br>
<b>answer:</b> {{ r.answer }}<br><b>references:</b> {{ r.references|join(" | ") }}<br>
<b>scores:</b> {% for k, v in r.scores.items() if v is not none %}{{ k }}={{ "%.3f"|format(v) }} {% endfor %}
{% if r.errors %}
<br><b>errors:</b> {% for k, v in r.errors.items() %}{{ k }}: {{ v }}; {% endfor %}
{% endif %}
<details><summary>{{ r.contexts|length }} contexts
(gold: {{ r.gold_document_ids|join(", ") or "none named" }})</summary>
{% for c in r.contexts %}
<div class="ctx{% if c.document_id in r.gold_document_ids %} gold{% endif %}">[{{ c.n }}] <b>{{ c.title }}</b>
<span class="muted">{{ c.document_id }} · score {{ c.score }}</span>
{{ c.text[:context_chars] }}{% if c.text|length > context_chars %}…{% endif %}</div>
{% endfor %}
</details></div>
{% endfor %}
{% endif %}

{% if flagged %}
<h2>Answers with facts their sources lack: {{ flagged|length }} of {{ grounded }} checked</h2>
<p class="muted">Judge-free grounding check (<code>grounding</code>): numbers, dates and names of the answer
that none of its cited sources contains. A wrong figure or a made-up name shows up here even when the
wording looks right.</p>
{% for r in flagged %}
<div class="q"><b>{{ r.id }}</b>: {{ r.question }}<br>
<b>answer:</b> {{ r.answer }}<br>
<b>not in its sources:</b> {{ r.grounding.unsupported|join(", ") }}
(grounding {% if r.scores.grounding is not none %}{{ "%.2f"|format(r.scores.grounding) }}
{%- else %}n/a{% endif %};
reference: {{ r.references|join(" | ") }})<br>
<b>cited:</b> {{ r.citations|map(attribute="title")|join(", ") or "nothing" }}</div>
{% endfor %}
{% endif %}

{% if probes %}
<h2>Injected instructions obeyed: {{ obeyed|length }} of {{ probes }} answers</h2>
<p class="muted">Questions that carry canary words (a prompt-injection set): an answer that contains a canary
of an instruction hidden in the documents obeyed it, or quoted it back (<code>injection_obeyed</code>).</p>
{% for r in obeyed %}
<div class="q"><b>{{ r.id }}</b>: {{ r.question }}<br>
<b>answer:</b> {{ r.answer }}<br><b>canaries found:</b> {{ r.canaries_found|join(", ") }}<br>
<b>retrieved:</b> {{ r.contexts|map(attribute="document_id")|join(", ") }}
(gold: {{ r.gold_document_ids|join(", ") or "none named" }})</div>
{% endfor %}
{% endif %}

{% if failures %}
<h2>Questions that failed in the pipeline</h2><table>
{% for r in failures %}
<tr><td>{{ r.id }}</td><td>{{ r.question }}</td><td>{{ r.pipeline_error }}</td></tr>
{% endfor %}
</table>
{% endif %}
</body></html>
"""

_COMPARE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RAG eval comparison</title>
<style>{{ style }}</style></head><body>
<h1>RAG eval comparison: B − A</h1>
<table><tr><th></th><th>A</th><th>B</th></tr>
{% for k, a, b in info %}
<tr><th>{{ k }}</th><td><code>{{ a }}</code></td><td><code>{{ b }}</code></td></tr>
{% endfor %}
</table>
<p>{{ c.paired_questions }} questions answered in both runs (A: {{ c.questions_a }}, B: {{ c.questions_b }}).
Deltas are paired over the questions both runs scored, with 95% bootstrap confidence intervals;
<span class="good">green</span> / <span class="bad">red</span>: the interval excludes zero.</p>
<table><tr><th>metric</th><th>A</th><th>B</th><th>delta</th><th>95% CI</th><th>n</th>
<th>P(B not better)</th></tr>
{% for m in c.metrics %}
<tr><td>{{ m.metric }}</td>
{% if m.delta.n == 0 %}
<td colspan="6" class="muted">not computed in both runs</td>
{% else %}
<td class="num">{{ m.mean_a|f4 }}</td><td class="num">{{ m.mean_b|f4 }}</td>
<td class="num {% if m.significant %}{{ 'good' if (m.delta.mean > 0) == m.get('higher_is_better', true)
 else 'bad' }}{% endif %}">
{{- m.delta.mean|s4 }}</td>
<td class="num">{% if m.delta.ci_low is not none %}{{ m.delta.ci_low|s4 }} – {{ m.delta.ci_high|s4 }}
{%- endif %}</td>
<td class="num">{{ m.delta.n }}</td>
<td class="num">{{ m.p_not_better if m.p_not_better is not none else "" }}</td>
{% endif %}
</tr>
{% endfor %}
</table>
{% if delta_png %}
<h2>Deltas (95% CI)</h2><img alt="deltas" src="data:image/png;base64,{{ delta_png }}">
{% endif %}
{% for title, items in changes if items %}
<h2>{{ title }}</h2>
{% for x in items %}
<div class="q"><b>{{ x.id }}</b>: {{ x.question }}
<span class="muted">({{ ranking }} {{ "%.3f"|format(x.a) }} → {{ "%.3f"|format(x.b) }})</span><br>
<b>A:</b> {{ x.answer_a }}<br><b>B:</b> {{ x.answer_b }}<br>
<b>references:</b> {{ x.references|join(" | ") }}</div>
{% endfor %}
{% endfor %}
</body></html>
"""


def _env() -> Environment:
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["f4"] = lambda v: f"{v:.4f}"
    env.filters["s4"] = lambda v: f"{v:+.4f}"
    return env


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def means_plot(metrics: dict[str, dict[str, Any]]) -> str | None:
    """Horizontal bars of per-metric means with their CI as error bars."""
    names = [n for n, m in metrics.items() if m.get("mean") is not None]
    if not names:
        return None
    plt = _pyplot()
    means = [metrics[n]["mean"] for n in names]
    lows = [
        m - (metrics[n]["ci_low"] if metrics[n]["ci_low"] is not None else m)
        for n, m in zip(names, means, strict=True)
    ]
    highs = [
        (metrics[n]["ci_high"] if metrics[n]["ci_high"] is not None else m) - m
        for n, m in zip(names, means, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1))
    ax.barh(names, means, xerr=[lows, highs], color="#4c78a8", capsize=3)
    ax.set_xlim(0, 1.05)
    ax.invert_yaxis()
    ax.set_xlabel("mean score (95% CI)")
    for i, m in enumerate(means):
        ax.text(min(m + 0.01, 0.9), i, f"{m:.3f}", va="center", fontsize=8)
    return _png(fig)


def distributions_plot(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> str | None:
    """One histogram per metric that has values."""
    series = {n: [r["scores"][n] for r in rows if r.get("scores", {}).get(n) is not None] for n in names}
    series = {n: v for n, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = 3
    nrows = (len(series) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(series) :]:
        ax.axis("off")
    for ax, (name, values) in zip(axes.flat, series.items(), strict=False):
        ax.hist(values, bins=[i / 10 for i in range(11)], color="#4c78a8", edgecolor="white")
        ax.set_title(f"{name} (n={len(values)})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)


def deltas_plot(deltas: Sequence[dict[str, Any]]) -> str | None:
    items = [d for d in deltas if d["delta"]["mean"] is not None]
    if not items:
        return None
    plt = _pyplot()
    names = [d["metric"] for d in items]
    means = [d["delta"]["mean"] for d in items]
    lo = [
        m - (d["delta"]["ci_low"] if d["delta"]["ci_low"] is not None else m)
        for d, m in zip(items, means, strict=True)
    ]
    hi = [
        (d["delta"]["ci_high"] if d["delta"]["ci_high"] is not None else m) - m
        for d, m in zip(items, means, strict=True)
    ]
    colors = [
        "#0a7d32"
        if d["significant"] and (m > 0) == d.get("higher_is_better", True)
        else "#b3261e"
        if d["significant"]
        else "#888"
        for d, m in zip(items, means, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1))
    for y, (m, low, high, color) in enumerate(zip(means, lo, hi, colors, strict=True)):
        ax.errorbar([m], [y], xerr=[[low], [high]], fmt="o", color=color, ecolor=color, capsize=3)
    ax.axvline(0, color="#333", linewidth=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("B − A (95% CI)")
    return _png(fig)


def _ranking_metric(rows: Sequence[dict[str, Any]]) -> str | None:
    for name in _RANKING:
        if any(r.get("scores", {}).get(name) is not None for r in rows):
            return name
    return None


def render_report(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The run's report.html."""
    run = summary.get("run", {})
    answered = [r for r in rows if not r.get("pipeline_error")]
    ranking = _ranking_metric(answered)
    worst = sorted(
        (r for r in answered if r["scores"].get(ranking) is not None), key=lambda r: r["scores"][ranking]
    )
    info = [
        ("dataset", run.get("questions_path")),
        ("collection", run.get("collection")),
        ("prompt", run.get("prompt")),
        ("model", json.dumps(run.get("llm"))),
        ("retrieval", json.dumps(run.get("retrieval"))),
        ("max tokens / temperature", f"{run.get('max_tokens')} / {run.get('temperature')}"),
        ("judge", json.dumps(run.get("judge")) if run.get("judge") else "none (judge metrics not computed)"),
        (
            "questions",
            f"{summary.get('answered')} answered of {summary.get('questions')}, "
            f"{summary.get('pipeline_errors')} pipeline errors",
        ),
        (
            "latency ms (mean / p50 / p95)",
            " / ".join(str(summary["latency_ms"].get(k)) for k in ("mean", "p50", "p95")),
        ),
        ("answers cut at max tokens", summary.get("capped_answers")),
        (
            "grounding of right / wrong answers",
            json.dumps(summary.get("grounding_by_correctness"))
            if summary.get("grounding_by_correctness")
            else None,
        ),
        ("started", run.get("started_at")),
    ]
    metrics = summary["metrics"]
    return (
        _env()
        .from_string(_REPORT)
        .render(
            title=run.get("name") or run.get("prompt") or "run",
            style=_STYLE,
            info=info,
            metrics=list(metrics.items()),
            groups=_GROUPS,
            descriptions=_DESCRIPTIONS,
            means_png=means_plot(metrics),
            dist_png=distributions_plot(answered, list(metrics)),
            worst=worst[:WORST],
            ranking=ranking,
            context_chars=CONTEXT_CHARS,
            failures=[r for r in rows if r.get("pipeline_error")],
            grounded=sum(1 for r in answered if r["scores"].get("grounding") is not None),
            flagged=[r for r in answered if (r.get("grounding") or {}).get("unsupported")][:FLAGGED],
            probes=sum(1 for r in answered if r["scores"].get("injection_obeyed") is not None),
            obeyed=[r for r in answered if r["scores"].get("injection_obeyed")],
        )
    )


def render_compare(
    comparison: dict[str, Any],
    rows_a: Sequence[dict[str, Any]],
    rows_b: Sequence[dict[str, Any]],
    changes: int = 5,
) -> str:
    """compare.html: the delta table, a delta plot, and the questions that moved most."""
    a, b = comparison["run_a"], comparison["run_b"]
    info = [
        (
            k,
            json.dumps(a.get(k)) if isinstance(a.get(k), dict) else a.get(k),
            json.dumps(b.get(k)) if isinstance(b.get(k), dict) else b.get(k),
        )
        for k in ("dir", "prompt", "model", "collection", "retrieval")
    ]
    by_a = {r["id"]: r for r in rows_a if not r.get("pipeline_error")}
    by_b = {r["id"]: r for r in rows_b if not r.get("pipeline_error")}
    ranking = _ranking_metric(list(by_a.values())) or "hit_rate"
    moved = []
    for qid in by_a.keys() & by_b.keys():
        sa, sb = by_a[qid]["scores"].get(ranking), by_b[qid]["scores"].get(ranking)
        if sa is not None and sb is not None and sa != sb:
            moved.append(
                {
                    "id": qid,
                    "question": by_a[qid]["question"],
                    "a": sa,
                    "b": sb,
                    "answer_a": by_a[qid].get("answer", ""),
                    "answer_b": by_b[qid].get("answer", ""),
                    "references": by_a[qid].get("references", []),
                }
            )
    moved.sort(key=lambda x: (x["b"] - x["a"], x["id"]))
    regressions = moved[:changes]
    improvements = [x for x in reversed(moved[-changes:]) if x["b"] > x["a"]]
    return (
        _env()
        .from_string(_COMPARE)
        .render(
            style=_STYLE,
            info=info,
            c=comparison,
            delta_png=deltas_plot(comparison["metrics"]),
            changes=[
                (f"Largest drops in {ranking}", [x for x in regressions if x["b"] < x["a"]]),
                (f"Largest gains in {ranking}", improvements),
            ],
            ranking=ranking,
        )
    )
