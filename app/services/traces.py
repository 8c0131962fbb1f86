"""Response traces, feedback and engagement: the use cases behind `/v1/responses/{id}[/feedback|/events]`.

`ChatService` hands every finished answer to `record` (both chat APIs, streaming or not); a trace that
cannot be stored is logged and counted, never an error for the answer. Reads and feedback are scoped
like everything else: a response in a collection the caller may not see is "not found".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.auth.principal import Principal
from app.services.answer_text import is_refusal
from app.services.chat_types import ChatResult, Citation, new_response_id
from app.services.errors import InvalidInput
from app.services.metrics import Metrics
from app.settings import Settings
from app.traces.store import EVENT_TYPES, RATINGS, Feedback, Trace, TraceStore
from ingest.errors import DomainError

if TYPE_CHECKING:
    from app.services.experiments import Enrollment
    from app.services.online_judge import OnlineJudge

log = logging.getLogger(__name__)

MAX_TEXT = 20_000
MAX_TAGS = 20


class TraceNotFound(DomainError, LookupError):
    """No such response (or one in a collection the caller may not see)."""

    kind, code = "not_found", "response_not_found"


def caller_of(principal: Principal) -> str:
    """Whose feedback it is: the API key, or the one anonymous caller when auth is off."""
    return principal.key_id or "anonymous"


def outcome_of(result: ChatResult) -> str:
    """`abstained` (the sources hold no answer), `refused` (the model declined), else `answered`;
    `error` is recorded by `answer_failed`."""
    if result.abstained:
        return "abstained"
    return "refused" if result.answered_by == "refused" or is_refusal(result.answer) else "answered"


@dataclass
class Timings:
    retrieve_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None


class TraceService:
    def __init__(
        self,
        settings: Settings,
        store: TraceStore,
        metrics: Metrics,
        *,
        judge: OnlineJudge | None = None,
        on_feedback: Callable[[Trace, Feedback], Awaitable[None]] | None = None,
    ):
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.judge = judge
        # Told of every feedback stored (the routing chain turns reviewed corrections into candidates).
        self.on_feedback = on_feedback
        self._sweeper: asyncio.Task[None] | None = None

    # -- recording -----------------------------------------------------------------------------

    async def record(
        self,
        result: ChatResult,
        *,
        principal: Principal,
        api: str,
        store_name: str,
        question: str,
        history: list[dict[str, str]],
        params: dict[str, Any],
        timings: Timings,
        unit: str | None = None,
        cost: float | None = None,
    ) -> None:
        """Store how `result` was made and count it; never raises. `unit`: what an experiment assigned
        its arm by; `cost`: its estimated price."""
        outcome = outcome_of(result)
        labels = {"prompt": result.prompt, "model": result.model}
        self.metrics.answers.labels(outcome=outcome, **labels).inc()
        if result.contexts:
            self.metrics.retrieval_top_score.labels(collection=result.collection).observe(
                max(c.score for c in result.contexts)
            )
        trace = Trace(
            response_id=result.response_id,
            created_at=time.time(),
            api=api,
            tenant=principal.tenant,
            key_id=principal.key_id,
            collection=store_name,
            conversation_id=result.conversation_id if result.history_saved else None,
            question=question,
            history=history,
            search_query=result.query,
            chunks=[_chunk(rank, c) for rank, c in enumerate(result.contexts, start=1)],
            prompt=result.prompt,
            model=result.model,
            params=params,
            retrieval=result.retrieval,
            answer=result.answer,
            citations=[c.model_dump(exclude={"text"}) for c in result.citations],
            finish_reason=result.finish_reason,
            outcome=outcome,
            grounding=(result.grounding or {}).get("score"),
            usage={k: int(v) for k, v in result.usage.items()},
            latency_ms={"retrieve": timings.retrieve_ms, "ttft": timings.ttft_ms, "total": timings.total_ms},
            experiment=result.experiment,
            arm=result.arm,
            unit=unit,
            cost=round(cost, 8) if cost is not None else None,
        )
        await self._store(trace)

    async def _store(self, trace: Trace) -> None:
        try:
            await self.store.record(trace)
        except Exception:  # the answer is already made: losing its trace must not lose the answer
            self.metrics.trace_failures.inc()
            log.exception("response %s: its trace could not be stored", trace.response_id)
            return
        if self.judge is not None and trace.outcome != "error":
            self.judge.maybe_score(trace)

    def answer_failed(self, prompt: str, model: str) -> None:
        self.metrics.answers.labels(outcome="error", prompt=prompt, model=model).inc()

    async def record_failure(
        self,
        *,
        principal: Principal,
        api: str,
        store_name: str,
        question: str,
        prompt: str,
        model: str,
        conversation_id: str,
        enrollment: Enrollment,
    ) -> None:
        """Store an `error` trace for a request that an experiment enrolled and that failed (its arm's
        error rate counts it); never raises."""
        trace = Trace(
            response_id=new_response_id(),
            created_at=time.time(),
            api=api,
            tenant=principal.tenant,
            key_id=principal.key_id,
            collection=store_name,
            conversation_id=conversation_id,
            question=question,
            history=[],
            search_query="",
            chunks=[],
            prompt=prompt,
            model=model,
            params={"model": model},
            retrieval={},
            answer="",
            citations=[],
            finish_reason=None,
            outcome="error",
            grounding=None,
            usage={},
            latency_ms={},
            experiment=enrollment.experiment,
            arm=enrollment.arm,
            unit=enrollment.unit,
            cost=0.0,
        )
        await self._store(trace)

    # -- reading and feedback --------------------------------------------------------------------

    async def get(self, response_id: str, *, principal: Principal) -> Trace:
        trace = await self.store.get(response_id)
        if trace is None or principal.visible(trace.collection) is None:
            raise TraceNotFound(f"response {response_id!r} not found")
        return trace

    async def feedback(self, response_id: str, body: dict[str, Any], *, principal: Principal) -> Feedback:
        """Store the caller's feedback (replacing its earlier one)."""
        trace = await self.get(response_id, principal=principal)
        given = _feedback(body, caller_of(principal))
        stored = await self.store.put_feedback(trace.response_id, given)
        self.metrics.feedback.labels(rating=stored.rating or "none").inc()
        if self.on_feedback is not None:
            await self.on_feedback(trace, stored)
        return stored

    async def event(self, response_id: str, kind: str, citation: int | None, *, principal: Principal) -> None:
        trace = await self.get(response_id, principal=principal)
        if kind not in EVENT_TYPES:
            raise InvalidInput(f"type must be one of {', '.join(EVENT_TYPES)}", code="invalid_event")
        if citation is not None and not 1 <= citation <= max(len(trace.citations), len(trace.chunks), 1):
            raise InvalidInput(f"citation {citation} is not one of this answer's", code="invalid_event")
        await self.store.add_event(trace.response_id, caller_of(principal), kind, citation)
        self.metrics.engagement.labels(type=kind).inc()

    async def search(
        self,
        *,
        principal: Principal,
        rating: str | None = None,
        collection: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Trace]:
        """Traces the caller may see (its tenant's, its key's collections), newest first."""
        if rating is not None and rating not in RATINGS:
            raise InvalidInput('rating must be "up" or "down"', code="invalid_request")
        stores = [principal.collection(collection)] if collection else None
        found = await self.store.search(
            since=since, collections=stores, rating=rating, limit=max(limit * 5, 500)
        )
        return [t for t in found if principal.visible(t.collection) is not None][:limit]

    async def figures(
        self, *, principal: Principal, stores: list[str], since: float | None = None
    ) -> dict[str, Any]:
        """The monitor report's figures (volume, latency, ratings, no-answer rate, top scores, judge) over
        the caller's traces in `stores` (store names; those it may not see are left out)."""
        from app.services.monitor_report import build_summary

        visible = [s for s in stores if principal.visible(s) is not None]
        traces = await self.store.search(since=since, collections=visible, limit=1_000_000) if visible else []
        return build_summary(traces, since=since)

    async def regression_rows(
        self,
        *,
        principal: Principal,
        rating: str | None = None,
        collection: str | None = None,
        since: float | None = None,
        reviewed_only: bool = False,
    ) -> list[dict[str, Any]]:
        """`ragserver feedback export` for the caller: its answers with feedback as eval questions."""
        from app.services.feedback_export import regression_row

        traces = await self.search(
            principal=principal, rating=rating, collection=collection, since=since, limit=100_000
        )
        return [
            regression_row(t)
            for t in reversed(traces)
            if t.feedback and (not reviewed_only or any(f.reviewed for f in t.feedback))
        ]

    # -- retention -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.responses.retention_days > 0:
            self._sweeper = asyncio.create_task(self._sweep_periodically(), name="responses-retention")

    async def stop(self) -> None:
        if self.judge is not None:
            await self.judge.aclose()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def sweep(self, now: float | None = None) -> int:
        days = self.settings.responses.retention_days
        if days <= 0:
            return 0
        return await self.store.delete_older_than((now or time.time()) - days * 86400)

    async def _sweep_periodically(self) -> None:
        while True:
            try:
                deleted = await self.sweep()
                if deleted:
                    log.info("retention: deleted %d response traces", deleted)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("response retention sweep failed; trying again later")
            await asyncio.sleep(3600)


def _chunk(rank: int, c: Citation) -> dict[str, Any]:
    return {
        "rank": rank,
        "chunk_id": c.chunk_id,
        "document_id": c.document_id,
        "score": c.score,
        "title": c.title,
        "source": c.source,
        "text": c.text,
    }


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string", code="invalid_feedback")
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"{name} is over {MAX_TEXT} characters", code="invalid_feedback")
    return value


def _feedback(body: dict[str, Any], caller: str) -> Feedback:
    unknown = set(body) - {"rating", "score", "comment", "correction", "tags", "reviewed"}
    if unknown:
        raise InvalidInput(f"unknown feedback fields: {', '.join(sorted(unknown))}", code="invalid_feedback")
    rating = body.get("rating")
    if rating is not None and rating not in RATINGS:
        raise InvalidInput('rating must be "up" or "down"', code="invalid_feedback")
    score = body.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise InvalidInput("score must be a number from 0 to 1", code="invalid_feedback")
        score = float(score)
    correction = _text(body, "correction")
    if rating is None and score is None and not correction:
        raise InvalidInput("give at least one of rating, score or correction", code="invalid_feedback")
    tags = body.get("tags") or []
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags)
    ):
        raise InvalidInput(
            f"tags must be a list of at most {MAX_TAGS} short strings", code="invalid_feedback"
        )
    reviewed = body.get("reviewed", False)
    if not isinstance(reviewed, bool):
        raise InvalidInput("reviewed must be true or false", code="invalid_feedback")
    return Feedback(
        caller=caller,
        rating=rating,
        score=score,
        comment=_text(body, "comment"),
        correction=correction,
        tags=list(dict.fromkeys(tags)),
        reviewed=reviewed,
    )
