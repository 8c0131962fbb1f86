"""When the sources hold no answer: the evidence, the fitted model's arithmetic, and the labelled set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.evaluation.answerability import fit, measure
from app.services.answerability import FEATURES, AnswerabilityModel, Evidence, evidence, load_model
from evals.make_answerability import build

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Source:
    n: int
    text: str
    title: str = ""
    score: float = 0.5


REDIS = [Source(1, "Redis uses jemalloc as its default memory allocator on Linux.", "Redis memory", 0.8)]


def test_the_evidence_of_an_answer_its_sources_hold() -> None:
    ev = evidence("Which allocator does Redis use on Linux?", "Redis uses jemalloc [1].", REDIS, REDIS)
    assert ev.question_coverage == 1.0 and ev.missing_names == 0 and ev.top_score == 0.8
    assert ev.answer_support == 1.0 and ev.unsupported_facts == 0.0 and not ev.dont_know


def test_the_evidence_of_an_invented_answer_and_an_absent_subject() -> None:
    invented = evidence(
        "Which allocator does Redis use?", "Redis uses libc malloc from Glibc 2.3.", REDIS, REDIS
    )
    assert invented.answer_support < 1.0 and invented.unsupported_facts > 0.5  # Glibc, 2.3: in no source
    absent = evidence("When was PostgreSQL 9.6 released?", "PostgreSQL 9.6 was released in 2016.", REDIS, [])
    assert absent.missing_names >= 2 and absent.question_coverage < 0.5 and absent.unsupported_facts == 1.0
    assert evidence("What is it?", "I don't know.", REDIS, []).dont_know


def test_the_model_is_a_logistic_regression_over_standardized_evidence() -> None:
    model = AnswerabilityModel(
        weights={"question_coverage": -2.0},
        bias=0.0,
        mean={"question_coverage": 0.5},
        scale={"question_coverage": 0.25},
        threshold=0.5,
        card={},
    )
    covered = Evidence(1.0, 0, 0.5, 1.0, 0.0, False)
    uncovered = Evidence(0.0, 2, 0.1, 0.2, 1.0, False)
    assert model.probability(covered) == pytest.approx(1 / (1 + 2.718281828**4), rel=1e-6)
    assert model.abstain(covered)[0] is False and model.abstain(uncovered)[0] is True
    assert model.abstain(Evidence(1.0, 0, 0.5, 1.0, 0.0, True))[0] is True  # the model's own "I don't know"
    again = AnswerabilityModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    with pytest.raises(ValueError, match="features"):
        AnswerabilityModel.from_dict({**model.to_dict(), "features": ["other"]})


def test_fitting_separates_the_labels_and_keeps_the_answerable_allowance(tmp_path: Path) -> None:
    rows = []
    for i in range(60):
        unanswerable = i % 2 == 0
        coverage = 0.2 + 0.01 * (i % 7) if unanswerable else 0.8 + 0.01 * (i % 7)
        ev = Evidence(coverage, int(unanswerable), 0.5, 0.9, 0.0, False)
        rows.append(
            {
                "label": "unanswerable" if unanswerable else "answerable",
                "kind": "absent" if unanswerable else "answerable",
                "split": "train" if i < 40 else "test",
                "evidence": ev.to_dict(),
            }
        )
    labelled = tmp_path / "set.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = fit(rows, labelled, max_answerable_abstained=0.1)
    assert model.weights["question_coverage"] < 0 and model.card["train_rows"] == 40
    figures = measure(rows, model)["test"]
    assert figures["unanswerable_abstained"] == 1.0 and figures["answerable_abstained"] == 0.0


def test_the_shipped_model_reads_the_features_it_was_fitted_on() -> None:
    model = load_model()
    if model is None:
        pytest.fail("app/services/answerability.json is missing: `ragserver eval answerability` writes it")
    assert set(model.weights) == set(FEATURES) and 0 < model.threshold <= 1


def test_the_labelled_set_is_deterministic_and_keeps_articles_on_one_side() -> None:
    data = ROOT.parent / "shared" / "data" / "cmu-qa"
    if not (data / "articles.jsonl").is_file():
        pytest.skip("../shared/data/cmu-qa is not on this machine")
    questions = [json.loads(line) for line in (data / "questions-dev.jsonl").read_text().splitlines()]
    articles = [json.loads(line) for line in (data / "articles.jsonl").read_text().splitlines()]
    rows = build(questions, articles)
    assert rows == build(questions, articles)
    excluded = set(rows[0]["corpus_excludes"])
    for row in rows:
        assert (row["article_id"] in excluded) == (row["kind"] == "absent")
    splits: dict[str, set[str]] = {}
    for row in rows:
        splits.setdefault(row["article_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())
    kinds = {r["kind"] for r in rows}
    assert kinds == {"answerable", "absent", "swapped"}
    shipped = ROOT / "evals" / "data" / "answerability" / "cmu-qa-dev.jsonl"
    assert [json.loads(line) for line in shipped.read_text().splitlines()] == rows
