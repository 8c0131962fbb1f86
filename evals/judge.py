"""ragas's judge metrics (Faithfulness, ResponseRelevancy, ContextPrecision, ContextRecall) against any
OpenAI-compatible endpoint, configured apart from the answering LLM.

ragas 0.4's metric collections run as designed: `llm_factory` wraps an `openai.AsyncOpenAI` client on the
judge URL with instructor in JSON mode (each judge call is a chat completion whose reply is a JSON
object), so any server that answers /v1/chat/completions works, a loopback one included. ResponseRelevancy
compares questions with the local embedder, so the judge needs no /v1/embeddings.

Judge calls are bounded by one semaphore per judge (`concurrency`), however many questions are in flight.
A metric that fails on a question is recorded as an error for that question, never a score.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evals.rag_metrics import JUDGE_METRICS, MetricScores
from evals.ragas_compat import prepare_ragas


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str
    model: str
    api_key: str = "not-needed"
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 2
    # ResponseRelevancy asks the judge for this many questions per answer.
    relevancy_strictness: int = 3

    def describe(self) -> dict[str, Any]:
        """What a run records about its judge (never the key)."""
        return {"base_url": self.base_url, "model": self.model}


@dataclass
class JudgeSample:
    question: str
    answer: str
    contexts: list[str]
    reference: str | None = None


def error_text(exc: BaseException, limit: int = 400) -> str:
    """A one-line, bounded error for a result row."""
    text = " ".join(str(exc).split()) or repr(exc)
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bounded_llm(llm: Any, semaphore: asyncio.Semaphore) -> Any:
    """`llm` (a ragas InstructorBaseRagasLLM) whose calls wait for `semaphore`."""
    prepare_ragas()
    from ragas.llms.base import InstructorBaseRagasLLM

    class BoundedLLM(InstructorBaseRagasLLM):
        def __init__(self) -> None:
            self.inner = llm
            self.model = getattr(llm, "model", "")

        def generate(self, prompt: str, response_model: Any) -> Any:
            return self.inner.generate(prompt, response_model)

        async def agenerate(self, prompt: str, response_model: Any) -> Any:
            async with semaphore:
                return await self.inner.agenerate(prompt, response_model)

    return BoundedLLM()


class RagasJudge:
    """Scores one answered question with the four judge metrics."""

    def __init__(self, config: JudgeConfig, embeddings: Any, *, llm: Any = None) -> None:
        """`embeddings`: ragas embeddings for ResponseRelevancy; `llm`: a ragas LLM instead of the URL's."""
        prepare_ragas()
        from ragas.metrics.collections import (
            AnswerRelevancy,
            ContextPrecisionWithReference,
            ContextRecall,
            Faithfulness,
        )

        self.config = config
        self._client = None
        if llm is None:
            from openai import AsyncOpenAI
            from ragas.llms import llm_factory

            self._client = AsyncOpenAI(
                base_url=config.base_url,
                api_key=config.api_key,
                timeout=config.timeout_s,
                max_retries=config.max_retries,
            )
            llm = llm_factory(config.model, client=self._client)
        self.semaphore = asyncio.Semaphore(max(1, config.concurrency))
        judge = bounded_llm(llm, self.semaphore)
        self.metrics: dict[str, Any] = {
            "faithfulness": Faithfulness(llm=judge),
            "answer_relevancy": AnswerRelevancy(
                llm=judge, embeddings=embeddings, strictness=config.relevancy_strictness
            ),
            "context_precision": ContextPrecisionWithReference(llm=judge),
            "context_recall": ContextRecall(llm=judge),
        }

    def _inputs(self, name: str, s: JudgeSample) -> dict[str, Any] | str:
        """The metric's ascore() arguments, or why it cannot be computed for this sample."""
        if name in ("faithfulness", "answer_relevancy") and not s.answer.strip():
            return "not computed: empty answer"
        if name != "answer_relevancy" and not s.contexts:
            return "not computed: no contexts retrieved"
        if name in ("context_precision", "context_recall") and not s.reference:
            return "not computed: the question has no reference answer"
        if name == "faithfulness":
            return {"user_input": s.question, "response": s.answer, "retrieved_contexts": s.contexts}
        if name == "answer_relevancy":
            return {"user_input": s.question, "response": s.answer}
        return {"user_input": s.question, "reference": s.reference, "retrieved_contexts": s.contexts}

    async def _one(self, name: str, sample: JudgeSample) -> MetricScores:
        scores = MetricScores.empty()
        inputs = self._inputs(name, sample)
        if isinstance(inputs, str):
            scores.set(name, None, reason=inputs)
            return scores
        try:
            result = await self.metrics[name].ascore(**inputs)
        except Exception as exc:  # one metric failing on one question is data, not a crash
            scores.fail(name, error_text(exc))
            return scores
        value = result.value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            scores.set(name, None, reason="not computed: the judge extracted no statements")
        else:
            scores.set(name, float(value))
        return scores

    async def score(self, sample: JudgeSample) -> MetricScores:
        """All four metrics of one sample, concurrently (each judge call still waits for the semaphore)."""
        return await self.score_some(sample, JUDGE_METRICS)

    async def score_some(self, sample: JudgeSample, names: Sequence[str]) -> MetricScores:
        """The metrics `names` of one sample (the online judge scores faithfulness and relevancy only)."""
        merged = MetricScores.empty()
        for part in await asyncio.gather(*(self._one(name, sample) for name in names)):
            merged.merge(part)
        return merged

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
