"""evals.routing_threshold: the precision-first threshold fit, the split by curated question, the
evaluation, and the shape of the labelled paraphrase set. No model is loaded: similarities are synthetic."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from evals.routing_threshold import (
    DEFAULT_PAIRS,
    Pair,
    evaluate,
    fit_threshold,
    load_pairs,
    round_up,
    split_by_curated,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "evals" / "data" / "routing" / "paraphrases.jsonl"


def test_separable_scores_give_the_lowest_paraphrase_and_full_recall() -> None:
    sims = [0.95, 0.91, 0.88, 0.70, 0.62, 0.40]
    same = [True, True, True, False, False, False]
    fit = fit_threshold(sims, same)
    assert fit.threshold == pytest.approx(0.88)
    assert (fit.precision, fit.recall, fit.n_pos, fit.n_neg, fit.served) == (1.0, 1.0, 3, 3, 3)


def test_the_smallest_threshold_reaching_the_precision_floor_is_chosen() -> None:
    sims = [0.9, 0.8, 0.7, 0.6, 0.5]
    same = [True, True, False, True, False]
    strict = fit_threshold(sims, same, min_precision=0.98)
    assert strict.threshold == pytest.approx(0.8)
    assert strict.precision == 1.0 and strict.recall == pytest.approx(2 / 3)
    loose = fit_threshold(sims, same, min_precision=0.75)  # 3 of 4 served at 0.6 are right
    assert loose.threshold == pytest.approx(0.6)
    assert loose.precision == pytest.approx(0.75) and loose.recall == 1.0


def test_precision_that_recovers_below_a_top_negative_is_found() -> None:
    # precision by threshold: 0.9 -> 0, 0.8 -> 1/2, 0.7 -> 2/3, 0.6 -> 3/4, 0.5 -> 3/5
    sims = [0.9, 0.8, 0.7, 0.6, 0.5]
    same = [False, True, True, True, False]
    fit = fit_threshold(sims, same, min_precision=0.7)
    assert fit.threshold == pytest.approx(0.6)
    assert fit.recall == 1.0 and fit.served == 4


def test_unreachable_precision_serves_nothing() -> None:
    fit = fit_threshold([0.9, 0.5], [False, True], min_precision=0.98)
    assert fit.threshold == pytest.approx(0.9 + 1e-6)
    assert fit.threshold > 0.9
    assert (fit.precision, fit.recall, fit.served) == (None, 0.0, 0)
    assert evaluate(fit.threshold, [0.9, 0.5], [False, True])["served"] == 0


def test_a_negative_tied_with_a_paraphrase_cannot_be_split_off() -> None:
    # sim >= t serves both rows at 0.8, so precision there is 1/2, never 1
    fit = fit_threshold([0.8, 0.8, 0.7], [True, False, True], min_precision=0.98)
    assert fit.served == 0 and fit.threshold > 0.8


def test_fit_is_deterministic_and_independent_of_row_order() -> None:
    rng = random.Random(7)
    rows = [(rng.random(), rng.random() < 0.5) for _ in range(200)]
    first = fit_threshold([s for s, _ in rows], [y for _, y in rows], min_precision=0.8)
    rng.shuffle(rows)
    second = fit_threshold([s for s, _ in rows], [y for _, y in rows], min_precision=0.8)
    assert first == second


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_threshold([], [])
    with pytest.raises(ValueError):
        fit_threshold([0.5, 0.6], [True])
    with pytest.raises(ValueError):
        fit_threshold([0.5], [True], min_precision=0.0)
    with pytest.raises(ValueError):
        fit_threshold([float("nan")], [True])


def test_evaluate_counts_served_pairs_at_or_above_the_threshold() -> None:
    result = evaluate(0.8, [0.9, 0.8, 0.79, 0.85, 0.3], [True, False, True, True, False])
    assert result["served"] == 3  # 0.9, 0.8 (tie serves), 0.85
    assert (result["served_correct"], result["served_wrong"], result["missed"]) == (2, 1, 1)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert (result["n_pos"], result["n_neg"]) == (3, 2)
    nothing = evaluate(0.99, [0.9, 0.1], [True, False])
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (None, 0.0, 0.0)


def test_round_up_never_lowers_the_threshold() -> None:
    assert round_up(0.9825) == pytest.approx(0.983)
    assert round_up(0.98249) == pytest.approx(0.983)
    assert round_up(0.823) == pytest.approx(0.823)
    assert round_up(0.8231) == pytest.approx(0.824)
    for t in (0.1, 0.7775, 0.85, 0.99999):
        assert round_up(t) >= t - 1e-12


def _synthetic_pairs(n_curated: int = 20) -> list[Pair]:
    return [
        Pair(curated=f"curated {c}", question=f"question {c}.{k}", same=k < 2, topic=f"t{c % 4}")
        for c in range(n_curated)
        for k in range(4)
    ]


def test_split_keeps_each_curated_question_on_one_side() -> None:
    pairs = _synthetic_pairs()
    train, test = split_by_curated(pairs, test_share=0.3, seed=0)
    train_c, test_c = {p.curated for p in train}, {p.curated for p in test}
    assert not train_c & test_c
    assert len(test_c) == 6 and len(train_c) == 14
    assert sorted(train + test, key=pairs.index) == pairs
    assert [p for p in pairs if p in train] == train  # rows keep their order


def test_split_is_deterministic_and_depends_on_the_seed_not_the_row_order() -> None:
    pairs = _synthetic_pairs()
    first = split_by_curated(pairs, seed=0)
    assert split_by_curated(pairs, seed=0) == first
    shuffled = list(pairs)
    random.Random(3).shuffle(shuffled)
    assert {p.curated for p in split_by_curated(shuffled, seed=0)[1]} == {p.curated for p in first[1]}
    others = [{p.curated for p in split_by_curated(pairs, seed=s)[1]} for s in range(1, 6)]
    assert any(o != {p.curated for p in first[1]} for o in others)


def test_split_edge_cases() -> None:
    pairs = _synthetic_pairs(2)
    train, test = split_by_curated(pairs, test_share=0.1)
    assert train and test  # a non-zero share holds out at least one curated question, never all
    assert split_by_curated(pairs, test_share=0.0) == (pairs, [])
    with pytest.raises(ValueError):
        split_by_curated(pairs, test_share=1.0)


def test_load_pairs_reads_and_rejects(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    row = {"curated": "When is payday?", "question": "What day do we get paid?", "same": True, "topic": "pay"}
    good.write_text(json.dumps(row) + "\n\n", encoding="utf-8")
    assert load_pairs(good) == [Pair("When is payday?", "What day do we get paid?", True, "pay")]
    for bad in (
        {**row, "same": "yes"},
        {**row, "question": ""},
        {k: v for k, v in row.items() if k != "topic"},
    ):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(bad) + "\n", encoding="utf-8")
        with pytest.raises(ValueError):
            load_pairs(path)


def test_the_labelled_set_has_the_promised_shape() -> None:
    assert DEFAULT_PAIRS == DATA
    pairs = load_pairs(DATA)
    by_curated: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_curated[p.curated].append(p)
    assert len(by_curated) >= 60
    for curated, rows in by_curated.items():
        assert sum(p.same for p in rows) >= 2, curated
        assert sum(not p.same for p in rows) >= 2, curated
        assert len({p.topic for p in rows}) == 1, curated
        assert all(p.question.strip().lower() != curated.strip().lower() for p in rows), curated
    keys = [(p.curated, p.question) for p in pairs]
    assert len(keys) == len(set(keys)), "duplicate rows"
    # a question is never both a paraphrase and a hard negative of the same curated question
    assert len({(p.curated, p.question.lower()) for p in pairs}) == len(pairs)
    # both kinds of source: CMU QA articles and the internal handbook
    topics = {p.topic for p in pairs}
    assert any(t.startswith("handbook/") for t in topics)
    assert sum(not t.startswith("handbook/") for t in topics) >= 20
