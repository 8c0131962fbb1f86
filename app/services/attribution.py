"""What an answer cites, and how well its facts are grounded in what it cites, without a judge model.

`attribute` keeps the sources an answer marks with [n]; an answer with no markers is attributed by
overlap, sentence by sentence: a sentence is attributed to the source holding most of its content terms
(stemmed words that are not stopwords, and numbers) when that source holds at least `min_overlap` of
them, and nothing is cited when no sentence is. Citing every retrieved chunk "just in case" told users
nothing and hid unsupported answers.

`grounding` checks the facts a reader would act on: every number, date and name in the answer should
occur in the cited sources. Its score is the share that do (None for an answer with no such facts), and
`unsupported` lists the ones that do not, so a wrong figure ("90 EUR" where the source says 65) is
flagged even when the wording looks fluent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, TypeVar

MARKER = re.compile(r"\[(\d{1,3})\]")  # an answer's [n]
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# A number as written: 65, 1,200, 3.5, 40%; a date's parts are numbers and month names.
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")  # where sentences split
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*)([^\W\d_][\w'’-]*)")
_POSSESSIVE = re.compile(r"['’]s$")
_MONTHS = frozenset(
    "january february march april may june july august september october november december".split()
)
# Words that start sentences or answers without naming anything.
_NOT_NAMES = frozenset(
    "yes no not according however also although because but therefore thus so sources source answer "
    "the a an in on at of for to by from with as it its this that these those there here he she they we "
    "you i his her their our your my mr mrs ms dr".split()
)


class Cited(Protocol):
    """What `attribute` needs of a source (the chat service's `Citation`)."""

    @property
    def n(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def title(self) -> str: ...


S = TypeVar("S", bound=Cited)


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS) | _NOT_NAMES


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer("english")


# Each word's term (None: a stopword), kept across calls: a language has far fewer words than a corpus
# has sentences, and a chat answer checks a few thousand words of sources in the hot path.
_TERMS: dict[str, str | None] = {}
_TERMS_MAX = 200_000


def content_terms(text: str) -> set[str]:
    """Stemmed, lowercased words that are not stopwords (2+ characters), and numbers."""
    out: set[str] = set()
    for word in _WORD.findall(text):
        lower = word.lower()
        try:
            term = _TERMS[lower]
        except KeyError:
            keep = (len(lower) > 1 and lower not in _stopwords()) or lower.isdigit()
            term = _stemmer().stemWord(lower) if keep else None
            if len(_TERMS) < _TERMS_MAX:
                _TERMS[lower] = term
        if term is not None:
            out.add(term)
    return out


def markers(answer: str) -> list[int]:
    """The [n] markers of `answer`, in order of first use."""
    return list(dict.fromkeys(int(m.group(1)) for m in MARKER.finditer(answer)))


def attribute(
    answer: str, sources: Sequence[S], *, min_overlap: float = 0.5, max_sources: int = 3
) -> list[S]:
    """The sources `answer` used: those it marks, else those holding at least `min_overlap` of its
    content terms (the best first, at most `max_sources`, none when nothing matches)."""
    by_n = {s.n: s for s in sources}
    marked = [by_n[n] for n in markers(answer) if n in by_n]
    if marked:
        return marked
    source_terms = [(s, content_terms(f"{s.title}\n{s.text}")) for s in sources]
    used: list[S] = []
    for sentence in SENTENCE.split(MARKER.sub(" ", answer)):
        terms = content_terms(sentence)
        if not terms:
            continue
        score, best = max(
            ((len(terms & have) / len(terms), s) for s, have in source_terms),
            key=lambda pair: (pair[0], -pair[1].n),
            default=(0.0, None),
        )
        if best is not None and score >= min_overlap and best not in used:
            used.append(best)
    return used[:max_sources]


@dataclass(frozen=True)
class Grounding:
    """The facts of an answer (numbers, dates, names) and which of them its sources lack."""

    facts: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """The share of facts found in the sources; None when the answer states none."""
        if not self.facts:
            return None
        return 1.0 - len(self.unsupported) / len(self.facts)

    def to_dict(self) -> dict[str, object]:
        return {"score": self.score, "facts": len(self.facts), "unsupported": self.unsupported}


def _number_key(raw: str) -> str:
    """65, 65.0 and 1,200 / 1200 compare equal."""
    text = raw.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", raw) else raw.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        return raw
    return str(int(value)) if value == int(value) else str(value)


def facts(answer: str, *, sentence_starts: bool = False) -> list[str]:
    """Numbers, month names and capitalised names of `answer`, as written, without repeats. A
    capitalised word that starts a sentence counts only with `sentence_starts` (it may be any word)."""
    text = MARKER.sub(" ", answer)
    found: list[str] = [m.group(0) for m in _NUMBER.finditer(text)]
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    stop = _stopwords()
    for m in _WORD.finditer(text):
        word = _POSSESSIVE.sub("", m.group(0))
        lower = word.lower()
        if lower in _MONTHS and word[0].isupper():  # "May", not "may"
            found.append(word)
        elif word[0].isupper() and lower not in stop and not word.isdigit():
            if sentence_starts or m.start() not in starts:
                found.append(word)
    return list(dict.fromkeys(found))


def _without_possessive(word: str) -> str:
    """A lowercased word without its possessive ("lincoln's" -> "lincoln"), without a regex per word."""
    return word[:-2] if word.endswith(("'s", "’s")) else word


@lru_cache(maxsize=256)
def fact_index(title: str, text: str) -> tuple[frozenset[str], frozenset[str]]:
    """A source's numbers (by value) and words (lowercased, possessive dropped), for `grounding`; a chunk
    retrieved again is not scanned again."""
    both = f"{title}\n{text}"
    numbers = frozenset(_number_key(m.group(0)) for m in _NUMBER.finditer(both))
    words = frozenset(map(_without_possessive, {w.lower() for w in _WORD.findall(both)}))
    return numbers, words


def grounding(answer: str, sources: Iterable[Cited]) -> Grounding:
    """Which of `answer`'s facts occur in `sources` (numbers by value, words ignoring case)."""
    claimed = facts(answer)
    if not claimed:
        return Grounding()
    indexed = [fact_index(s.title, s.text) for s in sources]
    numbers: set[str] = set().union(*(n for n, _ in indexed))
    words: set[str] = set().union(*(w for _, w in indexed))
    unsupported = []
    for fact in claimed:
        present = _number_key(fact) in numbers if fact[0].isdigit() else fact.lower() in words
        if not present:
            unsupported.append(fact)
    return Grounding(facts=claimed, unsupported=unsupported)
