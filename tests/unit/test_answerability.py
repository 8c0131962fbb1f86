"""When the sources hold no answer: the evidence, the fitted model's arithmetic, and the labelled set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.evaluation.answerability import fit, measure, recompute
from app.services.answerability import (
    STAGE_FEATURES,
    AnswerabilityModel,
    Evidence,
    Stage,
    evidence,
    load_model,
    question_evidence,
)
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
    assert ev.sentence_coverage == 1.0 and ev.missing_terms == 0
    assert ev.answer_support == 1.0 and ev.unsupported_facts == 0.0 and not ev.dont_know
    # The question's evidence measured before generation is reused, not measured again: same result.
    measured = question_evidence("Which allocator does Redis use on Linux?", REDIS)
    again = evidence(
        "Which allocator does Redis use on Linux?", "Redis uses jemalloc [1].", REDIS, REDIS, before=measured
    )
    assert again == ev


def test_the_question_evidence_looks_for_the_terms_together_in_one_passage() -> None:
    spread = [
        Source(1, "Leopards hunt at night. They rest in trees by day.", "leopard", 9.0),
        Source(2, "Duck eggs are covered in down while they incubate.", "duck", 5.0),
    ]
    # Every term is somewhere, but "egg" and "incubate" only in the duck's passage, without the leopard.
    ev = question_evidence("What are leopard eggs covered in when they incubate?", spread)
    assert ev.question_coverage == 1.0 and ev.missing_terms == 0
    assert ev.sentence_coverage < 1.0 and ev.top_score == 9.0
    held = question_evidence("What do leopards rest in by day?", spread)
    assert held.sentence_coverage == 1.0
    assert question_evidence("What is a leopard?", []).question_coverage == 0.0
    # A misspelt word counts as the source's word it is nearest to.
    cello = [Source(1, "The violoncello, or cello, is a bowed string instrument.", "Cello", 4.0)]
    assert question_evidence("What is a violincello?", cello).missing_terms == 0
    assert question_evidence("What is a trombone?", cello).missing_terms == 1


def _ev(coverage: float, *, dont_know: bool = False) -> Evidence:
    return Evidence(coverage, coverage, int(coverage < 0.5), 0, 5.0, 0.9, 0.0, dont_know)


def _stage(name: str, weight: float, threshold: float = 0.5) -> Stage:
    return Stage(
        features=STAGE_FEATURES[name],
        weights={"sentence_coverage": weight},
        bias=0.0,
        mean={"sentence_coverage": 0.5},
        scale={"sentence_coverage": 0.25},
        threshold=threshold,
    )


def test_the_model_is_a_logistic_regression_per_stage_over_standardized_evidence() -> None:
    model = AnswerabilityModel(before=_stage("before", -2.0, 0.9), after=_stage("after", -2.0), card={})
    covered, uncovered, middling = _ev(1.0), _ev(0.0), _ev(0.3)
    assert model.after.probability(covered.values()) == pytest.approx(1 / (1 + 2.718281828**4), rel=1e-6)
    assert model.abstain(covered)[0] is False and model.abstain(uncovered)[0] is True
    assert model.abstain(_ev(1.0, dont_know=True))[0] is True  # the model's own "I don't know"
    # Before generation only the surest cases abstain (a higher threshold); the question's evidence is enough.
    assert model.abstain_before(uncovered)[0] is True and model.abstain_before(middling)[0] is False
    assert model.abstain(middling)[0] is True
    again = AnswerabilityModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    with pytest.raises(ValueError, match="features"):
        stale_after = {**model.after.to_dict(), "features": ["x"]}
        AnswerabilityModel.from_dict({**model.to_dict(), "after": stale_after})
    with pytest.raises(ValueError, match="no 'before' stage"):
        AnswerabilityModel.from_dict({"after": model.after.to_dict()})


def test_fitting_separates_the_labels_and_keeps_the_answerable_allowance(tmp_path: Path) -> None:
    rows = []
    for i in range(60):
        unanswerable = i % 2 == 0
        text = "The leopard hunts at night in the forest."
        source = {"n": 1, "title": "Leopard", "text": text, "score": 5.0}
        question = "Where does the leopard lay its eggs?" if unanswerable else "When does the leopard hunt?"
        rows.append(
            {
                "question": question,
                "label": "unanswerable" if unanswerable else "answerable",
                "kind": "absent" if unanswerable else "answerable",
                "split": "train" if i < 40 else "test",
                "answer": "At night [1]." if not unanswerable else "In the forest [1].",
                "sources": [source],
                "cited": [source],
                # Two answerable drafts said "I don't know": the allowance must count them.
                "evidence": {"dont_know": i in (41, 43)},
            }
        )
    labelled = tmp_path / "set.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = fit(rows, labelled, max_answerable_abstained=0.1)
    assert model.before.weights["sentence_coverage"] < 0 and model.card["train_rows"] == 40
    figures = measure(rows, model)["test"]
    assert figures["unanswerable_abstained"] == 1.0 and figures["answerable_abstained"] == 0.2
    assert figures["unanswerable_abstained_before"] == 1.0  # decided without drafting
    assert recompute({k: v for k, v in rows[0].items() if k != "sources"}) is None  # an older run's row
    # A pool of answerable questions that look unanswerable keeps the before stage from abstaining on them.
    pool = [
        {**rows[0], "id": f"pool-{i}", "label": "answerable", "kind": "pool", "split": "train", "answer": ""}
        for i in range(10)
    ]
    careful = fit(rows, labelled, max_answerable_abstained=0.1, pool=pool)
    assert careful.before.threshold > model.before.threshold and careful.card["train_pool"] == 10
    assert measure([*rows, *pool], careful)["train"]["pool_abstained_before"] <= 0.1
    # Drafted pool questions are trained on, and both stages keep the allowance on them: answerable
    # questions whose sources miss the question's terms (as the unanswerable ones do) but whose drafts
    # are supported, so only a stage that sees the draft may tell them apart.
    drafted = [
        {**p, "id": f"drafted-{i}", "drafted": True, "answer": "At night [1]."} for i, p in enumerate(pool)
    ]
    both = fit(rows, labelled, max_answerable_abstained=0.1, pool=drafted)
    assert both.card["train_pool_drafted"] == 10 and both.card["train_rows"] == 50
    train = measure([*rows, *drafted], both)["train"]
    assert train["pool_drafted_n"] == 10 and train["pool_drafted_abstained"] <= 0.1


def test_the_shipped_model_reads_the_features_it_was_fitted_on() -> None:
    model = load_model()
    if model is None:
        pytest.fail("app/services/answerability.json is missing: `ragserver eval answerability` writes it")
    assert set(model.before.weights) == set(STAGE_FEATURES["before"]) and 0 < model.before.threshold <= 1
    assert set(model.after.weights) == set(STAGE_FEATURES["after"]) and 0 < model.after.threshold <= 1


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
