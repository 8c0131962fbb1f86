"""Answer vs reference answers without a judge: ragas's non-LLM metrics and semantic similarity through
the local embedder. Each metric takes the best score over the question's references (CMU QA lists
several phrasings of one answer).

Answers are compared without their [n] citation markers, and the string metrics see SQuAD-normalised
text (lower case, no punctuation or articles), so "Yes [1]." matches the reference "yes".
"""

from __future__ import annotations

import asyncio
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from evals.rag_metrics import ANSWER_METRICS, MetricScores
from evals.ragas_compat import prepare_ragas

if TYPE_CHECKING:
    from ingest.embedder import Embedder

_CITATION = re.compile(r"\s*\[\d{1,3}\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def strip_citations(answer: str) -> str:
    return _CITATION.sub("", answer).strip()


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def token_f1(reference: str, answer: str) -> float:
    """SQuAD token-overlap F1 of two normalised strings (ragas has no token F1 among its metrics)."""
    ref, ans = reference.split(), answer.split()
    if not ref or not ans:
        return float(ref == ans)
    common = sum((Counter(ref) & Counter(ans)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(ans), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def local_ragas_embeddings(embedder: Embedder) -> Any:
    """The server's embedder (packaged all-MiniLM-L6-v2 by default) as ragas "modern" embeddings."""
    prepare_ragas()
    from ragas.embeddings.base import BaseRagasEmbedding

    class LocalRagasEmbeddings(BaseRagasEmbedding):
        """Batched, cached, and off the event loop: `prefetch` embeds a batch in a worker thread so the
        metrics' own (synchronous) `embed_text` calls are dictionary look-ups."""

        def __init__(self, inner: Embedder, max_cached: int = 4096) -> None:
            super().__init__(cache=None)
            self.inner = inner
            self.max_cached = max_cached
            self._cache: dict[str, list[float]] = {}

        def _embed_many(self, texts: Sequence[str]) -> list[list[float]]:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vectors = np.asarray(self.inner.embed(missing), dtype=np.float64)
                if len(self._cache) + len(missing) > self.max_cached:
                    self._cache.clear()
                self._cache.update({t: v.tolist() for t, v in zip(missing, vectors, strict=True)})
            return [self._cache[t] for t in texts]

        async def prefetch(self, texts: Sequence[str]) -> None:
            await asyncio.to_thread(self._embed_many, list(texts))

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self._embed_many([text])[0]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return (await asyncio.to_thread(self._embed_many, [text]))[0]

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return self._embed_many(texts)

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return await asyncio.to_thread(self._embed_many, texts)

    return LocalRagasEmbeddings(embedder)


class AnswerScorer:
    """exact_match, string_presence, token_f1, string_similarity and answer_similarity of an answer."""

    def __init__(self, embeddings: Any) -> None:
        prepare_ragas()
        from ragas.metrics.collections import ExactMatch, SemanticSimilarity, StringPresence

        self.embeddings = embeddings
        self.exact_match = ExactMatch()
        self.string_presence = StringPresence()
        self.semantic_similarity = SemanticSimilarity(embeddings=embeddings)
        self.string_similarity: Any = None
        self.string_similarity_missing = ""
        try:
            from ragas.metrics.collections import NonLLMStringSimilarity

            self.string_similarity = NonLLMStringSimilarity()
        except ImportError:  # ragas needs rapidfuzz for it, and does not depend on it
            self.string_similarity_missing = "not computed: needs rapidfuzz (pip install rapidfuzz)"

    async def score(self, answer: str, references: Sequence[str]) -> MetricScores:
        scores = MetricScores.empty()
        if not references:
            for name in ANSWER_METRICS:
                scores.set(name, None, reason="not computed: the question has no reference answer")
            return scores
        text = strip_citations(answer)
        norm = normalize(text)
        refs = [(r, normalize(r)) for r in references]
        best: dict[str, float] = {}

        def keep(name: str, value: float) -> None:
            best[name] = max(best.get(name, value), value)

        await self.embeddings.prefetch([text, *references])
        for raw, ref in refs:
            keep("exact_match", (await self.exact_match.ascore(reference=ref, response=norm)).value)
            # Padded, so "yes" is found in "yes he did" but not in "yesterday".
            found = await self.string_presence.ascore(reference=f" {ref} ", response=f" {norm} ")
            keep("string_presence", found.value if ref else 0.0)
            keep("token_f1", token_f1(ref, norm))
            if self.string_similarity is not None:
                keep(
                    "string_similarity",
                    (await self.string_similarity.ascore(reference=ref, response=norm)).value,
                )
            similar = await self.semantic_similarity.ascore(reference=raw, response=text)
            keep("answer_similarity", similar.value)
        for name in ANSWER_METRICS:
            if name in best:
                scores.set(name, best[name])
        if self.string_similarity is None:
            scores.set("string_similarity", None, reason=self.string_similarity_missing)
        return scores
