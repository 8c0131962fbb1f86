"""evals.stats: bootstrap means and paired deltas; evals.rag_metrics: hit rate and MRR;
evals.followup_retrieval: gold-article hits by id or title."""

from __future__ import annotations

import math

import pytest

from evals.followup_retrieval import hit_rates
from evals.rag_metrics import retrieval_scores
from evals.stats import bootstrap_mean, clean, paired_delta

pytestmark = pytest.mark.unit


def test_bootstrap_mean_brackets_the_mean_and_is_deterministic() -> None:
    values = [0.0, 1.0] * 50
    first = bootstrap_mean(values)
    assert first.mean == pytest.approx(0.5)
    assert first.n == 100
    assert first.ci_low is not None and first.ci_high is not None
    assert 0.35 < first.ci_low < 0.5 < first.ci_high < 0.65
    assert bootstrap_mean(values) == first  # seeded


def test_bootstrap_mean_edge_cases() -> None:
    assert bootstrap_mean([]).mean is None
    assert bootstrap_mean([None, float("nan")]).n == 0
    one = bootstrap_mean([0.7])
    assert (one.mean, one.ci_low, one.ci_high, one.n) == (0.7, None, None, 1)
    flat = bootstrap_mean([1.0, 1.0, 1.0])
    assert (flat.mean, flat.ci_low, flat.ci_high) == (1.0, 1.0, 1.0)
    assert clean([1, None, float("nan"), 0.5]) == [1.0, 0.5]


def test_paired_delta_uses_only_questions_scored_in_both_runs() -> None:
    a = {"q1": 0.0, "q2": 0.0, "q3": 0.0, "q4": None, "q5": 1.0}
    b = {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 1.0}  # q5 missing in b, q4 missing in a
    d = paired_delta("m", a, b)
    assert d.delta.n == 3
    assert d.mean_a == 0.0 and d.mean_b == 1.0
    assert d.delta.mean == 1.0
    assert d.significant  # every pair improved: the interval is [1, 1]
    assert d.p_not_better == 0.0


def test_paired_delta_of_noise_is_not_significant() -> None:
    a = {f"q{i}": float(i % 2) for i in range(40)}
    b = {f"q{i}": float((i // 2) % 2) for i in range(40)}
    d = paired_delta("m", a, b)
    assert d.delta.mean == pytest.approx(0.0)
    assert d.delta.ci_low < 0 < d.delta.ci_high
    assert not d.significant
    assert 0.2 < d.p_not_better < 0.8
    assert paired_delta("m", {"q": None}, {"q": 1.0}).delta.n == 0


def test_retrieval_scores_rank_documents_not_chunks() -> None:
    s = retrieval_scores(["d1", "d1", "d2", "gold", "d3"], ["gold"])
    assert s.values == {"hit_rate": 1.0, "mrr": pytest.approx(1 / 3)}  # d1 twice is one document
    miss = retrieval_scores(["d1"], ["gold"])
    assert miss.values == {"hit_rate": 0.0, "mrr": 0.0}
    none = retrieval_scores(["d1"], [])
    assert none.values == {"hit_rate": None, "mrr": None}
    assert "no gold document" in none.not_computed["mrr"]
    assert not math.isnan(s.values["mrr"])


def test_followup_hits_count_the_gold_article_by_id_or_by_title() -> None:
    rows = [
        {"question": "Was he born there?", "article_id": "a1", "article_title": "Abraham_Lincoln"},
        {"question": "Did it flood?", "article_id": "a2", "article_title": "Nile"},
    ]
    found = {
        "Was he born there?": [("other", "Kentucky"), ("a1", "")],  # the gold id
        "Did it flood?": [("copy-of-a2", "nile")],  # a copy with the gold title, any case
        "WAS HE BORN THERE?": [("other", "Abraham Lincoln Memorial")],
        "DID IT FLOOD?": [],
    }
    queries = {"asked": lambda r: r["question"], "shouted": lambda r: r["question"].upper()}
    searched: list[str] = []

    def search(text: str) -> list[tuple[str, str]]:
        searched.append(text)
        return found[text]

    assert hit_rates(rows, queries, search) == {"asked": 1.0, "shouted": 0.0}
    assert searched == ["Was he born there?", "WAS HE BORN THERE?", "Did it flood?", "DID IT FLOOD?"]
