"""The monitor report's figures on synthetic traces: buckets, rates, splits and top-score drift."""

from __future__ import annotations

from pathlib import Path

from app.services.monitor_report import build_summary, write_report
from app.traces.store import Feedback, Trace
from tests.samples import make_trace

DAY = 86400.0
NOW = 1_800_000_000.0


def trace(
    i: int,
    at: float,
    top: float,
    *,
    prompt: str = "answer@v1",
    rating: str | None = None,
    outcome: str = "answered",
) -> Trace:
    return make_trace(
        f"resp_{i}",
        created_at=at,
        question=f"q{i}",
        search_query=f"q{i}",
        chunks=[
            {"rank": 1, "score": top, "document_id": "d"},
            {"rank": 2, "score": top - 0.1, "document_id": "e"},
        ],
        prompt=prompt,
        outcome=outcome,
        latency_ms={"retrieve": 1.0, "ttft": None, "total": 100.0 + i},
        feedback=[Feedback(caller="x", rating=rating)] if rating else [],
        judge={"faithfulness": 0.5} if i % 2 else None,
    )


def test_drift_rates_and_splits(tmp_path: Path) -> None:
    # Week one: top scores around 0.8; week two: around 0.4 (the corpus or the questions moved).
    early = [trace(i, NOW - 6 * DAY + i * 3600, 0.8, rating="up" if i % 2 else None) for i in range(10)]
    late = [
        trace(
            10 + i,
            NOW - 2 * DAY + i * 3600,
            0.4,
            prompt="answer@v2",
            rating="down",
            outcome="abstained" if i < 5 else "answered",
        )
        for i in range(10)
    ]
    summary = build_summary(early + late, since=NOW - 7 * DAY, now=NOW)
    assert summary["period"]["bucket_s"] == DAY
    overall = summary["overall"]
    assert overall["answers"] == 20 and overall["ratings"] == {"up": 5, "down": 10}
    assert overall["thumbs_up_rate"] == round(5 / 15, 4) and overall["feedback_rate"] == 0.75
    assert overall["abstained_rate"] == 0.25 and overall["judge"] == {"faithfulness": 0.5}
    drift = summary["top_score_drift"]
    assert drift["mean_shift"] == -0.4 and drift["ks_statistic"] == 1.0
    assert set(summary["by"]["prompt"]) == {"answer@v1", "answer@v2"}
    assert summary["by"]["prompt"]["answer@v2"]["thumbs_up_rate"] == 0.0
    assert sum(b["answers"] for b in summary["over_time"]) == 20
    write_report(early + late, tmp_path, since=NOW - 7 * DAY, now=NOW)
    html = (tmp_path / "report.html").read_text()
    assert "Retrieval top score" in html and "answer@v2" in html


def test_an_empty_period(tmp_path: Path) -> None:
    summary = write_report([], tmp_path, since=NOW - DAY, now=NOW)
    assert summary["overall"]["answers"] == 0 and summary["over_time"] == []
    assert (tmp_path / "report.html").is_file()
