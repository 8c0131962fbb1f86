"""What the user reads of an answer: no prompt echoes, markers 1..k by first use, no trailing disclaimer."""

from __future__ import annotations

import pytest

from app.services.answer_text import (
    AnswerFilter,
    filtered,
    is_refusal,
    is_yes_no_question,
    says_dont_know,
    tidy,
)
from app.services.chat_types import Citation

pytestmark = pytest.mark.unit


def _sources(k: int) -> list[Citation]:
    return [
        Citation(
            n=i, document_id=f"d{i}", source=f"s{i}.txt", chunk_id=f"c{i}", score=1.0 / i, text=f"text {i}"
        )
        for i in range(1, k + 1)
    ]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        # The new user's leaks, as the default model wrote them.
        ("Redis uses jemalloc and cite the source numbers. [1] [2]", "Redis uses jemalloc [1] [2]."),
        (
            "Volta married Teresa Peregrini. The source number for this information is [1].",
            "Volta married Teresa Peregrini [1].",
        ),
        ("Answer in one or two sentences. Paris is the capital [2].", "Paris is the capital [1]."),
        ("The port is 6379 [3].", "The port is 6379 [1]."),
        ("Cite sources carefully: the answer is 42 [1].", "Cite sources carefully: the answer is 42 [1]."),
    ],
)
def test_echoes_are_removed_and_markers_renumbered(raw: str, want: str) -> None:
    text, _ = filtered(raw, [1, 2, 3])
    assert tidy(text) == want


def test_a_stream_sends_what_the_whole_answer_says_piece_by_piece() -> None:
    raw = "Volta invented the pile [5] and cite the source numbers. The source number is [2]. Done [9]."
    whole, f_whole = filtered(raw, [1, 2, 3, 4, 5])
    for size in (1, 2, 3, 7):
        f = AnswerFilter([1, 2, 3, 4, 5])
        streamed = "".join(f.feed(raw[i : i + size]) for i in range(0, len(raw), size)) + f.flush()
        assert streamed == whole
        assert f.numbers == f_whole.numbers == {5: 1, 2: 2}
    assert "cite" not in whole.lower() and "[9]" not in whole  # [9] names no source: dropped
    assert tidy(whole) == "Volta invented the pile [1] [2]. Done."


def test_citations_are_numbered_in_order_of_first_use() -> None:
    sources = _sources(5)
    text, f = filtered("B is true [5]. A is true [1] [5].", [s.n for s in sources])
    assert text == "B is true [1]. A is true [2] [1]."
    cited = f.cited(sources)
    assert [(c.n, c.document_id) for c in cited] == [(1, "d5"), (2, "d1")]
    assert [s.n for s in sources] == [1, 2, 3, 4, 5]  # the retrieved sources keep their numbers


def test_nothing_is_held_back_longer_than_a_possible_echo_or_marker() -> None:
    f = AnswerFilter([1])
    assert f.feed("The answer is in") == "The answer is in"
    assert f.feed(" the") == " "  # "the" may start "the source number is"
    assert f.feed(" park [") == "the park "
    assert f.feed("1") == ""
    assert f.feed("].") == "[1]."
    assert f.flush() == ""


def test_a_trailing_dont_know_after_an_answer_is_dropped() -> None:
    assert tidy("Volta married Teresa Peregrini [1]. I don't know.") == "Volta married Teresa Peregrini [1]."
    assert tidy("I don't know.") == "I don't know."
    assert says_dont_know("I don't know.") and says_dont_know("The documents do not say [1].")
    assert says_dont_know("No, I don't know.") and not says_dont_know("No, Lincoln did not [1].")
    assert not says_dont_know(tidy("Volta married Teresa [1]. I don't know."))


def test_refusals_are_told_apart_from_abstentions() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot assist with hacking.")
    assert not is_refusal("I don't know.")
    assert not is_refusal("It cannot be changed after start [1].")


@pytest.mark.parametrize(
    ("question", "yes_no"),
    [
        ("Was Abraham Lincoln the sixteenth President of the United States?", True),
        ("Did his mother die of pneumonia?", True),
        ("Is it true that he became a professor in 1820?", True),
        ("Can the title of this famous 1811 paper be roughly translated into english?", True),
        ("Didn't Lincoln win in 1860?", True),
        ('  "Does Redis persist to disk?', True),
        ("Who suggested Lincoln grow a beard?", False),
        ("What happened in 1833?", False),
        ("How old was Lincoln in 1816?", False),
        ("Lincoln was born where?", False),
        ("", False),
    ],
)
def test_yes_no_questions_open_with_an_auxiliary_verb(question: str, yes_no: bool) -> None:
    assert is_yes_no_question(question) is yes_no
