"""What the user reads of a model's answer: the prompt's instructions it echoed taken out, its [n]
markers numbered 1..k in order of first use, and a trailing "I don't know." after a real answer dropped.

The same `AnswerFilter` runs over a streamed answer piece by piece and over a complete one, so what a
stream sent and the answer stored for it say the same. It holds back only what could still become an
echo or a marker (a few characters), as a server holds back a possible stop string.

A small model copies the closing instruction of the answer prompt into its answer ("... and cite the
source numbers. [1] [2]", "The source number for this information is [1]."): users read that as the
server leaking its prompt. Numbering by first use means the sources list a user sees is [1], [2], ...
in its own order, whatever rank the retriever gave them ("[1] and [5]" told users nothing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

from app.services.attribution import MARKER, SENTENCE, Cited

# Instruction text of the answer prompts (prompts/answer/*.yaml) that the models were seen to copy.
ECHOES = (
    "and cite the source numbers",
    "cite the source numbers",
    "the source number for this information is",
    "the source numbers for this information are",
    "the source number is",
    "answer in one or two sentences",
    "using only the numbered sources",
    "cite the sources you use with their numbers in brackets",
    "start your answer with yes or no, then say why in one sentence",
    "start your answer with yes or no",
)
_ECHO = re.compile(
    "|".join(r"\b" + r"\s+".join(map(re.escape, p.split())) + r"\b" for p in ECHOES), re.IGNORECASE
)
_PARTIAL_MARKER = re.compile(r"\[\d{0,3}$")
# Markers left after a sentence's end ("X. [1]." or "X. [1] [2]"): put before its full stop.
_MARKERS_AFTER_STOP = re.compile(r"\s*([.!?])\s*((?:\[\d{1,3}\]\s*)+)(?:[.!?](?=\s|$))?")
_SPACE_BEFORE_STOP = re.compile(r"\s+([.,;:!?])")
_DOUBLE_STOP = re.compile(r"([.!?])[.,;:]+")
# A sentence that says the answer is not known (said after an answer, it is a disclaimer).
DONT_KNOW = re.compile(
    r"^\W*(?:(?:no|sorry|unfortunately),?\s+)?"
    r"(i (do not|don't|cannot|can't) (know|find|answer)|(there is )?(no|not enough) (information|answer)"
    r"|the (sources|context|documents) (do|does) not (say|contain|mention|provide)|"
    r"(this|that|it) is not (mentioned|stated|given|provided))\b",
    re.IGNORECASE,
)
# An answer that declines to help (not for want of sources).
REFUSAL = re.compile(
    r"^\W*(i'?m sorry,? but )?i (cannot|can't|can not|won't|will not|am unable to|'m unable to) "
    r"(help|assist|provide|answer|comply|do that|share)",
    re.IGNORECASE,
)

S = TypeVar("S", bound=Cited)

# What an answer says when its sources do not hold one (`ChatResult.abstained`).
ABSTAINED = "The documents don't say."


class AnswerFilter:
    """Feeds an answer through in pieces (`feed`, then `flush`): echoes of the prompt removed, [n]
    markers of the given source numbers renumbered 1..k by first use, markers of no source dropped."""

    def __init__(self, source_numbers: Sequence[int]):
        self._known = set(source_numbers)
        self.numbers: dict[int, int] = {}  # source n -> the number the user sees
        self._pending = ""
        self._started = False  # whether any text has gone out (what an echo left at the start is cut)

    def feed(self, text: str) -> str:
        buffer = _ECHO.sub("", self._pending + text)
        hold = max(_echo_prefix_length(buffer), _marker_prefix_length(buffer))
        ready, self._pending = buffer[: len(buffer) - hold], buffer[len(buffer) - hold :]
        return self._out(ready)

    def flush(self) -> str:
        rest, self._pending = _ECHO.sub("", self._pending), ""
        return self._out(rest)

    def _out(self, text: str) -> str:
        text = MARKER.sub(self._renumber, text)
        if not self._started:
            text = text.lstrip(" \t\n.,;:")
            self._started = bool(text)
        return text

    def _renumber(self, match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n not in self._known:
            return ""
        return f"[{self.numbers.setdefault(n, len(self.numbers) + 1)}]"

    def cited(self, sources: Sequence[S]) -> list[S]:
        """The sources the filtered answer marks, renumbered as it shows them, in that order."""
        by_n = {s.n: s for s in sources}
        return [
            renumbered(by_n[n], shown) for n, shown in sorted(self.numbers.items(), key=lambda item: item[1])
        ]


def renumbered(source: S, n: int) -> S:
    """`source` shown as number `n` (a copy; the retrieved source keeps its own)."""
    copy = getattr(source, "model_copy", None)
    if copy is None:
        raise TypeError(f"cannot renumber a {type(source).__name__}")
    return copy(update={"n": n})  # type: ignore[no-any-return]


def filtered(answer: str, source_numbers: Sequence[int]) -> tuple[str, AnswerFilter]:
    """A complete answer through `AnswerFilter` (what a stream of it would have sent)."""
    f = AnswerFilter(source_numbers)
    return f.feed(answer) + f.flush(), f


def tidy(answer: str) -> str:
    """The stored answer: markers before the full stop they followed, no space before punctuation, and
    a closing "I don't know." after a real answer dropped."""
    text = _MARKERS_AFTER_STOP.sub(lambda m: f" {m.group(2).strip()}{m.group(1)}", answer)
    text = _DOUBLE_STOP.sub(r"\1", _SPACE_BEFORE_STOP.sub(r"\1", text))
    text = re.sub(r"[ \t]{2,}", " ", text).strip()
    sentences = [s for s in SENTENCE.split(text) if s.strip()]
    if len(sentences) > 1 and DONT_KNOW.search(sentences[-1]) and not DONT_KNOW.search(sentences[0]):
        cut = text.rfind(sentences[-1])
        text = text[:cut].rstrip()
    return text


# A question answered by yes or no opens with an auxiliary verb ("Was ...?", "Did ...?", "Is it true
# that ...?"); a question word ("Who", "When", "How") or anything else does not.
_YES_NO_OPENERS = frozenset(
    "am is are was were do does did have has had can could will would shall should may might must".split()
    + ["ca", "wo", "sha"]  # what "can't", "won't" and "shan't" leave without their "n't"
)
_FIRST_WORD = re.compile(r"[A-Za-z']+")


def is_yes_no_question(question: str) -> bool:
    """`question` asks for a yes or a no: it opens with an auxiliary verb (a negative one too: "Didn't
    ...?", "Isn't ...?"). Answer prompts that declare `yes_no` ask such answers to start with Yes or No."""
    first = _FIRST_WORD.search(question)
    if first is None:
        return False
    word = first.group(0).lower()
    word = word.removesuffix("n't")  # "isn't" -> "is", "didn't" -> "did"
    return word in _YES_NO_OPENERS


def says_dont_know(answer: str) -> bool:
    """The answer (after `tidy`) opens by saying the sources do not hold it."""
    return bool(DONT_KNOW.search(MARKER.sub("", answer)))


def is_refusal(answer: str) -> bool:
    return bool(REFUSAL.search(answer))


def _echo_prefix_length(text: str) -> int:
    """The longest end of `text`, starting at a word, that could still grow into an echo."""
    lower = text.lower()
    best = 0
    for phrase in ECHOES:
        for k in range(min(len(lower), len(phrase) - 1), best, -1):
            start = len(lower) - k
            if phrase.startswith(lower[start:]) and (start == 0 or not lower[start - 1].isalnum()):
                best = k
                break
    return best


def _marker_prefix_length(text: str) -> int:
    match = _PARTIAL_MARKER.search(text)
    return len(match.group(0)) if match else 0
