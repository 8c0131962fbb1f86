"""The metrics a RAG eval reports, in display order, and the retrieval ones (no model needed).

Every metric is a per-question score, higher is better, in [0, 1] (a cosine similarity may dip just below
0); a run's figure is the mean over the questions where it was computed. A score that could not be
computed is `None` with a reason, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    name: str
    group: str  # retrieval | answer | judge
    description: str


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("hit_rate", "retrieval", "a gold document is among the retrieved contexts"),
    MetricSpec("mrr", "retrieval", "1 / rank of the first gold document among the retrieved documents"),
    MetricSpec("exact_match", "answer", "ragas ExactMatch on normalised text, best reference"),
    MetricSpec(
        "string_presence", "answer", "ragas StringPresence: a reference occurs in the answer (normalised)"
    ),
    MetricSpec("token_f1", "answer", "SQuAD token F1 of answer vs best reference"),
    MetricSpec("string_similarity", "answer", "ragas NonLLMStringSimilarity (Levenshtein), best reference"),
    MetricSpec(
        "answer_similarity", "answer", "ragas SemanticSimilarity with the local embedder, best reference"
    ),
    MetricSpec("faithfulness", "judge", "ragas Faithfulness: answer claims supported by the contexts"),
    MetricSpec(
        "answer_relevancy",
        "judge",
        "ragas ResponseRelevancy (AnswerRelevancy): answer addresses the question",
    ),
    MetricSpec(
        "context_precision", "judge", "ragas ContextPrecision (with reference): useful contexts ranked first"
    ),
    MetricSpec("context_recall", "judge", "ragas ContextRecall: reference claims found in the contexts"),
)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
ANSWER_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.group == "answer")
JUDGE_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.group == "judge")
NO_JUDGE = "not computed: no judge configured"


@dataclass
class MetricScores:
    """Scores of one question: a value, or None with a reason (not computed) or an error (failed)."""

    values: dict[str, float | None]
    not_computed: dict[str, str]
    errors: dict[str, str]

    @classmethod
    def empty(cls) -> MetricScores:
        return cls({}, {}, {})

    def set(self, name: str, value: float | None, *, reason: str | None = None) -> None:
        self.values[name] = None if value is None else round(float(value), 6)
        if value is None:
            self.not_computed[name] = reason or "not computed"

    def fail(self, name: str, error: str) -> None:
        self.values[name] = None
        self.errors[name] = error

    def merge(self, other: MetricScores) -> None:
        self.values.update(other.values)
        self.not_computed.update(other.not_computed)
        self.errors.update(other.errors)


def retrieval_scores(context_document_ids: Sequence[str], gold_document_ids: Sequence[str]) -> MetricScores:
    """Hit rate and reciprocal rank against the gold documents.

    Ranks are document ranks: the contexts' document ids in retrieval order with repeats dropped, so two
    chunks of one wrong document count as one miss.
    """
    scores = MetricScores.empty()
    if not gold_document_ids:
        for name in ("hit_rate", "mrr"):
            scores.set(name, None, reason="not computed: the dataset names no gold document")
        return scores
    gold = set(gold_document_ids)
    ranked = list(dict.fromkeys(context_document_ids))
    rank = next((i for i, doc in enumerate(ranked, start=1) if doc in gold), None)
    scores.set("hit_rate", 1.0 if rank else 0.0)
    scores.set("mrr", 1.0 / rank if rank else 0.0)
    return scores
