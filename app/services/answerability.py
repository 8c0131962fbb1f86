"""Whether the sources hold an answer: measured evidence, and logistic models fitted on labelled questions.

Two checks, each judge-free and about a millisecond:

- **before generation**, from the question and its sources alone (`question_evidence`):
  `question_coverage` (the share of the question's content terms found in some source),
  `sentence_coverage` (the best share found together in one passage: three neighbouring sentences of a
  source, with its title), `missing_terms` (the question's content terms in no source), `missing_names`
  (its names and numbers in no source: an absent subject) and `top_score` (the best retrieval score).
  A misspelt term ("violincello") counts as the source's word it is nearest to (rapidfuzz ratio >= 80).
  When these say the sources hold no answer, the chat service abstains without calling the LLM: no draft
  is streamed and then withdrawn, and the seconds of generation are saved.
- **after generation**, with the draft answer too (`evidence`): `answer_support` (the share of the
  answer's content terms found in the sources it cites, all sources when it cites none),
  `unsupported_facts` (the share of its numbers, dates and names in none of them) and `dont_know` (the
  model said it does not know, which always abstains). (The share of the answer's new terms found in the
  passages that best match the question was tried too: it did not separate the labels, ROC AUC 0.50.)

`AnswerabilityModel` turns each stage's evidence into P(unanswerable) with weights fitted by `ragserver
eval answerability` (logistic regression, scikit-learn, on the labelled CMU QA set built by
`evals/make_answerability.py`) and stored as JSON (`app/services/answerability.json`), so serving needs
only this arithmetic. The thresholds were chosen on the training split; the held-out split's figures are
in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

from app.services.answer_text import says_dont_know
from app.services.attribution import MARKER, SENTENCE, Cited, content_terms, facts, grounding

QUESTION_FEATURES = (
    "question_coverage",
    "sentence_coverage",
    "missing_terms",
    "missing_names",
    "top_score",
)
ANSWER_FEATURES = ("answer_support", "unsupported_facts")
# What each stage's model reads (the model's own "I don't know" abstains by itself, it is not weighed).
STAGE_FEATURES = {"before": QUESTION_FEATURES, "after": QUESTION_FEATURES + ANSWER_FEATURES}
DEFAULT_MODEL = Path(__file__).with_name("answerability.json")
# Words every question has: not evidence of its subject.
_PASSAGE_SENTENCES = 3  # 2 and 1 separated the labels less well (docs/BENCHMARKS.md, "Abstention")
_FUZZY_MIN_LENGTH, _FUZZY_MIN_RATIO = 5, 80
_QUESTION_WORDS = frozenset(
    content_terms(
        "what which who whom whose when where why how many much long name named called kind type year "
        "mean means meaning happen happened"
    )
)


@dataclass(frozen=True)
class QuestionEvidence:
    """What the question and its sources say, before any answer is drafted."""

    question_coverage: float
    sentence_coverage: float
    missing_terms: int
    missing_names: int
    top_score: float

    def values(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def to_dict(self) -> dict[str, float | int | bool]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Evidence(QuestionEvidence):
    """The question's evidence and the draft answer's."""

    answer_support: float
    unsupported_facts: float
    dont_know: bool


@dataclass(frozen=True)
class _Passages:
    """The sources' terms, all together and passage by passage (`_PASSAGE_SENTENCES` neighbouring
    sentences and the title)."""

    terms: set[str]
    passages: list[frozenset[str]]


@lru_cache(maxsize=256)
def _source_terms(title: str, text: str) -> tuple[frozenset[str], tuple[frozenset[str], ...]]:
    """A source's terms, passage by passage, and all of them (a chunk that is retrieved again, as popular
    ones are, is not stemmed again)."""
    title_terms = content_terms(title)
    sentences = [content_terms(s) for s in SENTENCE.split(text) if s.strip()] or [set()]
    passages = tuple(
        frozenset(title_terms.union(*sentences[i : i + _PASSAGE_SENTENCES])) for i in range(len(sentences))
    )
    return frozenset(title_terms.union(*sentences)), passages


def _passages(sources: Sequence[Cited]) -> _Passages:
    everything: set[str] = set()
    passages: list[frozenset[str]] = []
    for source in sources:
        terms, mine = _source_terms(source.title, source.text)
        everything |= terms
        passages.extend(mine)
    return _Passages(everything, passages)


def _asked(question: str, vocabulary: set[str]) -> set[str]:
    """The question's content terms, a misspelt one replaced by the nearest term of `vocabulary`."""
    from rapidfuzz import fuzz, process

    asked = content_terms(question) - _QUESTION_WORDS
    out: set[str] = set()
    choices: list[str] | None = None
    for term in sorted(asked):
        if term in vocabulary or len(term) < _FUZZY_MIN_LENGTH:
            out.add(term)
            continue
        choices = choices if choices is not None else sorted(vocabulary)  # sorted: ties resolve the same way
        near = process.extractOne(term, choices, scorer=fuzz.ratio, score_cutoff=_FUZZY_MIN_RATIO)
        out.add(near[0] if near else term)
    return out


def _share(part: set[str], whole: AbstractSet[str]) -> float:
    return len(part & whole) / len(part) if part else 1.0


def _question_evidence(question: str, sources: Sequence[Cited], found: _Passages) -> QuestionEvidence:
    asked = _asked(question, found.terms)
    best = max((_share(asked, p) for p in found.passages), default=0.0) if sources else 0.0
    names = facts(question)
    return QuestionEvidence(
        question_coverage=_share(asked, found.terms) if sources else 0.0,
        sentence_coverage=best,
        missing_terms=len(asked - found.terms),
        missing_names=len(grounding(question, sources).unsupported) if names else 0,
        top_score=max((float(getattr(s, "score", 0.0)) for s in sources), default=0.0),
    )


def question_evidence(question: str, sources: Sequence[Cited]) -> QuestionEvidence:
    """What `question` and its `sources` say about answerability, before generation."""
    return _question_evidence(question, sources, _passages(sources))


def evidence(
    question: str,
    answer: str,
    sources: Sequence[Cited],
    cited: Sequence[Cited],
    *,
    before: QuestionEvidence | None = None,
) -> Evidence:
    """What the question, the sources and the draft answer say about answerability; `before`: the
    question's evidence when it was already measured (before generation), not measured again."""
    found = _passages(sources)
    before = before if before is not None else _question_evidence(question, sources, found)
    support_from = cited or sources
    support_terms = _passages(support_from).terms if cited else found.terms
    said = content_terms(MARKER.sub(" ", answer))
    checked = grounding(answer, support_from)
    return Evidence(
        **asdict(before),
        answer_support=len(said & support_terms) / len(said) if said else 0.0,
        unsupported_facts=1.0 - checked.score if checked.score is not None else 0.0,
        dont_know=says_dont_know(answer),
    )


@dataclass(frozen=True)
class Stage:
    """P(unanswerable) = sigmoid(bias + weights . standardized evidence); abstain at `threshold`."""

    features: tuple[str, ...]
    weights: dict[str, float]
    bias: float
    mean: dict[str, float]
    scale: dict[str, float]
    threshold: float

    def probability(self, values: Mapping[str, float]) -> float:
        z = self.bias
        for name in self.features:
            z += (
                self.weights.get(name, 0.0)
                * (values[name] - self.mean.get(name, 0.0))
                / (self.scale.get(name) or 1.0)
            )
        return 1.0 / (1.0 + math.exp(-z))

    def to_dict(self) -> dict[str, object]:
        return {
            "features": list(self.features),
            "weights": self.weights,
            "bias": self.bias,
            "mean": self.mean,
            "scale": self.scale,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object], name: str) -> Stage:
        listed = data.get("features")
        features = tuple(str(f) for f in listed) if isinstance(listed, list) else ()
        if features != STAGE_FEATURES[name]:
            raise ValueError(
                f"answerability model's {name!r} features {list(features)} "
                f"are not {list(STAGE_FEATURES[name])}"
            )
        return cls(
            features=features,
            weights=dict(data["weights"]),  # type: ignore[call-overload]
            bias=float(data["bias"]),  # type: ignore[arg-type]
            mean=dict(data["mean"]),  # type: ignore[call-overload]
            scale=dict(data["scale"]),  # type: ignore[call-overload]
            threshold=float(data["threshold"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class AnswerabilityModel:
    """The two stages: `before` (question and sources) and `after` (the draft answer too)."""

    before: Stage
    after: Stage
    card: dict[str, object]

    def abstain_before(self, ev: QuestionEvidence) -> tuple[bool, float]:
        """Whether to abstain without generating, and P(unanswerable)."""
        p = self.before.probability(ev.values())
        return p >= self.before.threshold, p

    def abstain(self, ev: Evidence) -> tuple[bool, float]:
        """Whether to withdraw the draft, and P(unanswerable); the model's own "I don't know" always does."""
        p = self.after.probability(ev.values())
        return ev.dont_know or p >= self.after.threshold, p

    def to_dict(self) -> dict[str, object]:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "card": self.card}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> AnswerabilityModel:
        stages = {}
        for name in STAGE_FEATURES:
            stage = data.get(name)
            if not isinstance(stage, Mapping):
                raise ValueError(
                    f"answerability model has no {name!r} stage (fit it with `ragserver eval answerability`)"
                )
            stages[name] = Stage.from_dict(stage, name)
        return cls(before=stages["before"], after=stages["after"], card=dict(data.get("card") or {}))  # type: ignore[call-overload]


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> AnswerabilityModel | None:
    """The fitted model at `path` (the shipped one by default; None when that is missing). Raises
    ValueError for a `path` that is not there or does not hold a model of these features."""
    file = Path(path) if path else DEFAULT_MODEL
    if not file.is_file():
        if path:
            raise ValueError(f"answers.abstain_model {path!r} is not a file")
        return None
    try:
        return AnswerabilityModel.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{file} is not an answerability model: {exc!r}") from exc
