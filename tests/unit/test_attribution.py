"""Citations by use, grounding of numbers, dates and names, and follow-up rewrites (no model needed)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app.services.attribution import attribute, facts, grounding
from app.services.followups import deterministic_rewrite, usable_rewrite
from evals.make_followups import refer_back, subject_names

pytestmark = pytest.mark.unit


@dataclass
class Source:
    n: int
    text: str
    title: str = ""


SOURCES = [
    Source(1, "The daily per-diem allowance for business travel is 65 EUR per person.", "Travel policy"),
    Source(2, "Weekend travel needs approval from the CFO, Anna Berg, in advance.", "Travel policy"),
    Source(3, "Emperor penguins breed during the Antarctic winter.", "Penguins"),
]


def cited(answer: str) -> list[int]:
    return [s.n for s in attribute(answer, SOURCES)]


def test_markers_decide_when_the_answer_has_them() -> None:
    assert cited("Ask Anna Berg [2], she signs it [2].") == [2]
    assert cited("65 EUR [1][9]") == [1]  # a marker with no source is ignored


def test_without_markers_sources_are_attributed_by_overlap_and_none_when_nothing_matches() -> None:
    assert cited("The daily per-diem allowance is 65 EUR.") == [1]
    assert cited("The CFO, Anna Berg, approves weekend travel.") == [2]
    assert cited("I don't know.") == []
    assert cited("Bananas are yellow.") == []
    assert cited("Yes.") == []


def test_grounding_flags_a_wrong_figure_and_passes_a_right_one() -> None:
    wrong = grounding("The per-diem is 90 EUR.", [SOURCES[0]])
    assert wrong.unsupported == ["90"] and wrong.score == 0.5
    right = grounding("The per-diem is 65 EUR per person.", [SOURCES[0]])
    assert right.unsupported == [] and right.score == 1.0
    assert grounding("The CFO.", [SOURCES[1]]).score == 1.0
    assert grounding("It is approved.", [SOURCES[1]]).score is None  # no facts to check
    assert grounding("Founded in 1998 by Bob.", []).score == 0.0  # nothing cited: nothing supports it
    assert grounding("It costs 1,200 EUR.", [Source(1, "A fee of 1200 EUR applies.")]).score == 1.0
    assert facts("On 12 March 1998 Bob met Alice [1].") == ["12", "1998", "March", "Bob", "Alice"]


HISTORY = [
    {"role": "user", "content": "What is the daily per-diem allowance?"},
    {
        "role": "assistant",
        "content": "The daily per-diem allowance for business travel is 65 EUR per person.",
    },
]


@pytest.mark.parametrize(
    ("rewrite", "usable"),
    [
        ("What is the per-diem allowance on weekends?", True),
        ("The daily per-diem allowance for business travel is 65 EUR per person.", False),  # the answer
        ("User: What is it?\nAssistant: 65 EUR\nQuestion: And weekends?", False),  # the transcript
        ("", False),
        ("How do emperor penguins breed?", False),  # a drift
        ("word " * 60, False),
        ('The answer to this question would be "Yes, the allowance applies on weekends."', False),
        ("Yes, the per-diem allowance applies on weekends.", False),
    ],
)
def test_unusable_rewrites_are_refused(rewrite: str, usable: bool) -> None:
    assert usable_rewrite(rewrite, "And what about weekends?", HISTORY) is usable


VOLTA = [
    {"role": "user", "content": "Who did Alessandro Volta marry?"},
    {"role": "assistant", "content": "Alessandro Volta married Teresa Peregrini [1]."},
]


@pytest.mark.parametrize(
    ("rewrite", "usable"),
    [
        ("What did Alessandro Volta invent in 1800?", True),
        ("What did Volta invent in 1800", True),  # a question without its "?"
        ("Who invented in 1800?", False),  # the subject lost: "it" was Volta
        ("What did it invent in 1800?", False),  # the pronoun kept: still no subject
        ("SELECT invention FROM inventions WHERE inventor = 'Volta' AND year = 1800;", False),  # SQL
        ("`invent(1800)`", False),  # code
        ("Volta invented the voltaic pile in 1800.", False),  # a statement, not a question
    ],
)
def test_condensed_queries_must_be_questions_about_the_conversation(rewrite: str, usable: bool) -> None:
    assert usable_rewrite(rewrite, "What did it invent in 1800?", VOLTA) is usable


def test_the_deterministic_rewrite_keeps_the_topic() -> None:
    query = deterministic_rewrite("And what about weekends?", HISTORY)
    assert query.startswith("What is the daily per-diem allowance?") and query.endswith(
        "And what about weekends?"
    )
    lincoln = [
        {"role": "user", "content": "Who was the 16th president?"},
        {"role": "assistant", "content": "Abraham Lincoln."},
    ]
    assert "Abraham Lincoln" in deterministic_rewrite("When was he born?", lincoln)


def test_followup_questions_refer_back_with_a_pronoun() -> None:
    names = subject_names("Abraham_Lincoln")
    assert names == ["Abraham Lincoln", "Lincoln"]
    he = ("he", "his")
    assert (
        refer_back("When did Lincoln begin his political career?", names, he)
        == "When did he begin his political career?"
    )
    assert (
        refer_back("Was Abraham Lincoln's mother from Kentucky?", names, he)
        == "Was his mother from Kentucky?"
    )
    assert refer_back("Lincoln was born where?", names, he) == "He was born where?"
    assert refer_back("Did Lincoln meet Lincoln?", names, he) is None
    assert refer_back("Who wrote the Gettysburg Address?", names, he) is None


def test_a_runaway_generation_is_spotted() -> None:
    from app.llm.local_provider import _Runaway

    words = {1: "The", 2: " policy", 3: " applies", 4: " to", 5: " all", 6: " staff.", 7: "\nUser", 8: ":"}

    def decode(ids: list[int]) -> str:
        return "".join(words.get(i, "?") for i in ids)

    prompt = [99] * 10
    loop = _Runaway(len(prompt), decode)
    generated: list[int] = []
    for token in [1, 2, 3, 4, 5, 6] * 3:
        generated.append(token)
        if loop.check(prompt + generated):
            break
    assert loop.reason == "loop" and loop.period == 6 and len(generated) == 18
    turn = _Runaway(len(prompt), decode)
    assert not turn.check(prompt + [1, 2, 3, 7])
    assert turn.check(prompt + [1, 2, 3, 7, 8]) and turn.reason == "transcript"
    varied = _Runaway(len(prompt), decode)
    assert not any(varied.check(prompt + list(range(20, n))) for n in range(21, 80))


def test_sentences_from_one_template_stop_the_generation() -> None:
    from app.llm.local_provider import _Runaway

    text = "Lincoln was a lawyer. He loved to play chess. He loved to play golf. He loved to play rugby."
    pieces = [w + " " for w in text.split(" ")]
    guard = _Runaway(0, lambda ids: "".join(pieces[i] for i in ids))
    stopped_at = next(n for n in range(1, len(pieces) + 1) if guard.check(list(range(n))))
    assert guard.reason == "template" and stopped_at == len(pieces)
    calm = _Runaway(0, lambda ids: "".join(pieces[i] for i in ids))
    varied = "Lincoln was a lawyer. He was born in Kentucky. Later he moved to Illinois.".split(" ")
    pieces[:] = [w + " " for w in varied]
    assert not any(calm.check(list(range(n))) for n in range(1, len(pieces) + 1))
