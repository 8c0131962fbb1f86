"""The online judge: a sampled share of live answers (`judge.sample_rate`) scored in the background by
an OpenAI-compatible judge LLM with ragas's faithfulness and answer relevancy (the metrics `eval rag`
uses offline). Bounded: `judge.concurrency` judge calls at once and at most `judge.max_pending` answers
waiting (beyond, samples are dropped and counted). It never delays an answer and never fails one: a
judge outage is a counted failure. Scores land on the response record and in
`ragserver_online_judge_score{metric}`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from app.services.metrics import Metrics
from app.settings import JudgeSettings
from app.traces.store import Trace, TraceStore

log = logging.getLogger(__name__)

ONLINE_METRICS = ("faithfulness", "answer_relevancy")


class OnlineJudge:
    def __init__(
        self,
        settings: JudgeSettings,
        embedder: Callable[[], Any],
        store: TraceStore,
        metrics: Metrics,
        *,
        llm: Any = None,
        rng: random.Random | None = None,
    ):
        self.settings = settings
        self._embedder = embedder
        self.store = store
        self.metrics = metrics
        self._llm = llm  # a ragas LLM (tests); None: the configured URL
        self._rng = rng or random.Random()
        self._judge: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe_score(self, trace: Trace) -> bool:
        """Sample `trace` and, when picked, score it in the background; True when it was queued."""
        if self._rng.random() >= self.settings.sample_rate:
            return False
        if len(self._tasks) >= self.settings.max_pending:
            self.metrics.judge_outcomes.labels(outcome="dropped").inc()
            return False
        task = asyncio.create_task(self._score(trace), name=f"judge-{trace.response_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait_idle(self) -> None:
        """Wait for the answers being judged (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _build(self) -> Any:
        if self._judge is None:
            from evals.answer_metrics import local_ragas_embeddings
            from evals.judge import JudgeConfig, RagasJudge

            config = JudgeConfig(
                base_url=self.settings.base_url or "",
                model=self.settings.model,
                api_key=self.settings.api_key.get_secret_value(),
                concurrency=self.settings.concurrency,
                timeout_s=self.settings.timeout_s,
                max_retries=0,
            )
            self._judge = RagasJudge(config, local_ragas_embeddings(self._embedder()), llm=self._llm)
        return self._judge

    async def _score(self, trace: Trace) -> None:
        try:
            from evals.judge import JudgeSample

            judge = await asyncio.to_thread(self._build)
            sample = JudgeSample(
                question=trace.question,
                answer=trace.answer,
                contexts=[c.get("text", "") for c in trace.chunks],
            )
            scores = await judge.score_some(sample, ONLINE_METRICS)
            got = {name: v for name in ONLINE_METRICS if (v := scores.values.get(name)) is not None}
            if not got:
                raise RuntimeError(f"the judge gave no score: {scores.errors or scores.not_computed}")
            await self.store.set_judge(trace.response_id, got)
            for name, value in got.items():
                self.metrics.judge_scores.labels(metric=name).observe(value)
            self.metrics.judge_outcomes.labels(outcome="scored").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a judge outage is counted, never raised
            self.metrics.judge_outcomes.labels(outcome="failed").inc()
            log.warning("online judge failed on %s: %s", trace.response_id, str(exc)[:300])

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._judge is not None:
            await self._judge.aclose()
            self._judge = None
