"""The routing classifier's labelled sets: the category map, the hand-written rows, and the builders."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evals.routing_labels import (
    DEFAULT_CATEGORIES,
    DEFAULT_OUT_OF_SCOPE,
    DEFAULT_SMALL_TALK,
    OUT_OF_SCOPE,
    SCOPE_LABELS,
    SMALL_TALK,
    build_intents,
    build_scope,
    load_categories,
    main,
    normalise_title,
    read_jsonl,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
CMU_QA = ROOT.parent / "shared" / "data" / "cmu-qa"
CATEGORIES = {
    "us_presidents",
    "scientists",
    "artists",
    "animals",
    "countries",
    "cities",
    "languages",
    "instruments",
}


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cmu(name: str) -> Path:
    path = CMU_QA / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine (the CMU QA set lives in ../shared/data)")
    return path


def test_titles_are_compared_without_underscores_or_case() -> None:
    assert normalise_title("Gray_Wolf") == normalise_title("gray wolf") == "gray wolf"
    assert normalise_title("Ulysses_S._Grant") == normalise_title("Ulysses S. Grant")


def test_the_category_map_uses_a_few_known_categories() -> None:
    raw = json.loads(DEFAULT_CATEGORIES.read_text(encoding="utf-8"))
    assert set(raw.values()) == CATEGORIES
    categories = load_categories()
    assert categories["polar bear"] == "animals" and categories["otter"] == "animals"
    assert categories["ulysses s. grant"] == "us_presidents"


def test_every_article_title_has_a_category() -> None:
    articles = read_jsonl(_cmu("articles.jsonl"))
    categories = load_categories()
    missing = sorted({a["title"] for a in articles if normalise_title(a["title"]) not in categories})
    assert not missing
    stale = set(categories) - {normalise_title(a["title"]) for a in articles}
    assert not stale


def test_every_question_title_has_a_category() -> None:
    questions = read_jsonl(_cmu("questions-dev.jsonl"))
    unmapped: Counter[str] = Counter()
    rows = build_intents(CMU_QA / "questions-dev.jsonl", unmapped=unmapped)
    assert not unmapped
    assert 0 < len(rows) <= len(questions)
    assert len({r["text"] for r in rows}) == len(rows)
    assert {r["label"] for r in rows} <= CATEGORIES


@pytest.mark.parametrize(
    ("path", "label", "at_least"),
    [(DEFAULT_SMALL_TALK, SMALL_TALK, 150), (DEFAULT_OUT_OF_SCOPE, OUT_OF_SCOPE, 200)],
)
def test_the_hand_written_rows_are_unique_non_empty_and_labelled(
    path: Path, label: str, at_least: int
) -> None:
    rows = read_jsonl(path)
    assert len(rows) >= at_least
    assert all(set(r) == {"text", "label"} for r in rows)
    assert {r["label"] for r in rows} == {label}
    texts = [r["text"] for r in rows]
    assert all(t.strip() == t and t for t in texts)
    folded = [" ".join(t.split()).casefold() for t in texts]
    assert len(set(folded)) == len(folded), [t for t, n in Counter(folded).items() if n > 1]


def test_small_talk_and_out_of_scope_do_not_overlap() -> None:
    small = {r["text"].casefold() for r in read_jsonl(DEFAULT_SMALL_TALK)}
    oos = {r["text"].casefold() for r in read_jsonl(DEFAULT_OUT_OF_SCOPE)}
    assert not small & oos


def test_no_hand_written_row_is_a_cmu_question() -> None:
    questions = {" ".join(q["question"].split()).casefold() for q in read_jsonl(_cmu("questions-dev.jsonl"))}
    for path in (DEFAULT_SMALL_TALK, DEFAULT_OUT_OF_SCOPE):
        assert not {r["text"].casefold() for r in read_jsonl(path)} & questions


def test_build_intents_dedupes_and_counts_unmapped_titles(tmp_path: Path) -> None:
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps({"Polar bear": "animals", "Abraham Lincoln": "us_presidents"}))
    questions = _write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question": "Do polar bears hibernate?", "article_title": "polar_bear"},
            {"question": "Do polar bears  hibernate? ", "article_title": "Polar_Bear"},
            {"question": "Was Lincoln a lawyer?", "article_title": "Abraham_Lincoln"},
            {"question": "Is Lima a capital?", "article_title": "Lima"},
            {"question": "Is Lima on the coast?", "article_title": "Lima"},
            {"question": "", "article_title": "Abraham_Lincoln"},
        ],
    )
    unmapped: Counter[str] = Counter()
    rows = build_intents(questions, categories, unmapped=unmapped)
    assert rows == [
        {"text": "Do polar bears hibernate?", "label": "animals"},
        {"text": "Was Lincoln a lawyer?", "label": "us_presidents"},
    ]
    assert unmapped == Counter({"Lima": 2})


def test_conflicting_spellings_of_a_title_are_rejected(tmp_path: Path) -> None:
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps({"Otter": "animals", "otter": "instruments"}))
    with pytest.raises(ValueError, match="mapped to both"):
        load_categories(categories)


def _scope_files(tmp_path: Path, n_questions: int = 20) -> tuple[Path, Path, Path]:
    questions = _write_jsonl(
        tmp_path / "q.jsonl",
        [{"question": f"Question number {i}?", "article_title": "X"} for i in range(n_questions)]
        + [{"question": "Question number 0?", "article_title": "Y"}],
    )
    small = _write_jsonl(
        tmp_path / "st.jsonl",
        [{"text": "hi", "label": "small_talk"}, {"text": "thanks", "label": "small_talk"}],
    )
    oos = _write_jsonl(tmp_path / "oos.jsonl", [{"text": "How do I bake bread?", "label": "out_of_scope"}])
    return questions, small, oos


def test_build_scope_has_the_three_labels_and_every_answerable_question(tmp_path: Path) -> None:
    questions, small, oos = _scope_files(tmp_path)
    rows = build_scope(questions, small, oos)
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == set(SCOPE_LABELS)
    assert counts == Counter({"answerable": 20, "small_talk": 2, "out_of_scope": 1})
    assert len({r["text"] for r in rows}) == len(rows)


def test_seeded_sampling_of_answerable_questions_is_deterministic(tmp_path: Path) -> None:
    questions, small, oos = _scope_files(tmp_path)
    first = build_scope(questions, small, oos, answerable_per_label=5, seed=3)
    assert first == build_scope(questions, small, oos, answerable_per_label=5, seed=3)
    answerable = [r["text"] for r in first if r["label"] == "answerable"]
    assert len(answerable) == 5
    others = {
        tuple(
            r["text"]
            for r in build_scope(questions, small, oos, answerable_per_label=5, seed=s)
            if r["label"] == "answerable"
        )
        for s in range(5)
    }
    assert len(others) > 1
    assert (
        len(
            [
                r
                for r in build_scope(questions, small, oos, answerable_per_label=500)
                if r["label"] == "answerable"
            ]
        )
        == 20
    )


def test_a_text_under_two_labels_or_a_wrong_label_is_an_error(tmp_path: Path) -> None:
    questions, small, _ = _scope_files(tmp_path)
    clash = _write_jsonl(tmp_path / "clash.jsonl", [{"text": "hi", "label": "out_of_scope"}])
    with pytest.raises(ValueError, match="labelled both"):
        build_scope(questions, small, clash)
    with pytest.raises(ValueError, match="not 'small_talk'"):
        build_scope(questions, clash, clash)


def test_main_writes_json_lines_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions, small, oos = _scope_files(tmp_path)
    out = tmp_path / "out" / "scope.jsonl"
    main(
        [
            "scope",
            "--questions",
            str(questions),
            "--small-talk",
            str(small),
            "--out-of-scope",
            str(oos),
            "--out",
            str(out),
        ]
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["labels"] == {"answerable": 20, "out_of_scope": 1, "small_talk": 2}
    rows = read_jsonl(out)
    assert len(rows) == summary["rows"] == 23 and all(set(r) == {"text", "label"} for r in rows)
