"""Whether the sources hold an answer: measured evidence, and a logistic model fitted on labelled questions.

The evidence, for a question, its sources and the model's draft answer (all judge-free, ~1 ms):

- `question_coverage`: the share of the question's content terms found in some source;
- `missing_names`: the question's names and numbers found in no source (an absent subject);
- `top_score`: the best retrieval score;
- `answer_support`: the share of the answer's content terms found in the sources it cites (all sources
  when it cites none);
- `unsupported_facts`: the share of the answer's numbers, dates and names in none of its cited sources;
- `dont_know`: the model said it does not know.

`AnswerabilityModel` turns the evidence into P(unanswerable) with weights fitted by `ragserver eval
answerability` (logistic regression, scikit-learn, on the labelled CMU QA set built by
`evals/make_answerability.py`) and stored as JSON (`app/services/answerability.json`), so serving needs
only this arithmetic. The threshold was chosen on the training split; the held-out split's figures are
in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from app.services.answer_text import says_dont_know
from app.services.attribution import MARKER, Cited, content_terms, facts, grounding

FEATURES = (
    "question_coverage",
    "missing_names",
    "top_score",
    "answer_support",
    "unsupported_facts",
    "dont_know",
)
DEFAULT_MODEL = Path(__file__).with_name("answerability.json")
# Words every question has: not evidence of its subject.
_QUESTION_WORDS = frozenset(
    content_terms(
        "what which who whom whose when where why how many much long name named called kind type year "
        "mean means meaning happen happened"
    )
)


@dataclass(frozen=True)
class Evidence:
    question_coverage: float
    missing_names: int
    top_score: float
    answer_support: float
    unsupported_facts: float
    dont_know: bool

    def vector(self) -> list[float]:
        return [float(getattr(self, name)) for name in FEATURES]

    def to_dict(self) -> dict[str, float | int | bool]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def evidence(question: str, answer: str, sources: Sequence[Cited], cited: Sequence[Cited]) -> Evidence:
    """What the question, the sources and the draft answer say about answerability."""
    # Each source's terms once (the cited ones are among the sources, by chunk or by text).
    terms_of = {f"{s.title}\n{s.text}": set[str]() for s in [*sources, *cited]}
    for text in terms_of:
        terms_of[text] = content_terms(text)
    source_terms: set[str] = set().union(*terms_of.values()) if sources else set()
    asked = content_terms(question) - _QUESTION_WORDS
    coverage = len(asked & source_terms) / len(asked) if asked else 1.0
    names = facts(question)
    missing = len(grounding(question, sources).unsupported) if names else 0
    top = max((float(getattr(s, "score", 0.0)) for s in sources), default=0.0)
    support_from = cited or sources
    support_terms: set[str] = set().union(*(terms_of[f"{s.title}\n{s.text}"] for s in support_from))
    said = content_terms(MARKER.sub(" ", answer))
    support = len(said & support_terms) / len(said) if said else 0.0
    checked = grounding(answer, support_from)
    unsupported = 1.0 - checked.score if checked.score is not None else 0.0
    return Evidence(coverage, missing, top, support, unsupported, says_dont_know(answer))


@dataclass(frozen=True)
class AnswerabilityModel:
    """P(unanswerable) = sigmoid(bias + weights . standardized evidence); abstain at `threshold`."""

    weights: dict[str, float]
    bias: float
    mean: dict[str, float]
    scale: dict[str, float]
    threshold: float
    card: dict[str, object]

    def probability(self, ev: Evidence) -> float:
        z = self.bias
        for name, value in zip(FEATURES, ev.vector(), strict=True):
            z += (
                self.weights.get(name, 0.0)
                * (value - self.mean.get(name, 0.0))
                / (self.scale.get(name) or 1.0)
            )
        return 1.0 / (1.0 + math.exp(-z))

    def abstain(self, ev: Evidence) -> tuple[bool, float]:
        p = self.probability(ev)
        return ev.dont_know or p >= self.threshold, p

    def to_dict(self) -> dict[str, object]:
        return {
            "features": list(FEATURES),
            "weights": self.weights,
            "bias": self.bias,
            "mean": self.mean,
            "scale": self.scale,
            "threshold": self.threshold,
            "card": self.card,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AnswerabilityModel:
        if list(data.get("features", [])) != list(FEATURES):  # type: ignore[call-overload]
            raise ValueError(f"answerability model features {data.get('features')} are not {list(FEATURES)}")
        return cls(
            weights=dict(data["weights"]),  # type: ignore[call-overload]
            bias=float(data["bias"]),  # type: ignore[arg-type]
            mean=dict(data["mean"]),  # type: ignore[call-overload]
            scale=dict(data["scale"]),  # type: ignore[call-overload]
            threshold=float(data["threshold"]),  # type: ignore[arg-type]
            card=dict(data.get("card") or {}),  # type: ignore[call-overload]
        )


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> AnswerabilityModel | None:
    """The fitted model at `path` (the shipped one by default); None when there is none."""
    file = Path(path) if path else DEFAULT_MODEL
    if not file.is_file():
        return None
    return AnswerabilityModel.from_dict(json.loads(file.read_text()))
