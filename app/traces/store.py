"""Response traces, feedback and engagement events: the `TraceStore` protocol and its SQL store.

Every answer (both chat APIs, streaming or not) becomes one `Trace`: what was asked, how it was
searched, every chunk the LLM was shown, the prompt, model and parameters, latency parts, usage and
the caller. Feedback is one row per (response, caller): the same caller sending again replaces it.
Engagement events are appended. All in the relational system of record (SQLite by default,
PostgreSQL via `RAGSERVER_DATABASE_URL`), migrated by Alembic like the other tables.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.db.tables import response_events as events_t
from app.db.tables import response_feedback as feedback_t
from app.db.tables import responses as responses_t

T = TypeVar("T")

RATINGS = ("up", "down")
EVENT_TYPES = ("citation_opened", "copied", "regenerated", "shared")
OUTCOMES = ("answered", "abstained", "refused", "error")
# Ids clients see for one response: ours, and the OpenAI-compatible ones built from it.
_ID_PREFIXES = ("resp_", "chatcmpl-", "cmpl-")


def canonical_response_id(any_id: str) -> str:
    """`resp_<hex>` for a response id or the id of its OpenAI-compatible completion (`chatcmpl-<hex>`,
    `cmpl-<hex>`): one resource, several names."""
    for prefix in _ID_PREFIXES:
        if any_id.startswith(prefix):
            rest = any_id[len(prefix) :]
            return rest if rest.startswith("resp_") else "resp_" + rest
    return any_id


@dataclass
class Feedback:
    caller: str
    rating: str | None = None
    score: float | None = None
    comment: str | None = None
    correction: str | None = None
    tags: list[str] = field(default_factory=list)
    # Marked by a reviewer for the regression set (`ragserver feedback export --reviewed`).
    reviewed: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trace:
    """How one answer was made."""

    response_id: str
    created_at: float
    api: str  # chat | chat.completions | completions | responses
    tenant: str
    key_id: str | None
    collection: str  # the store name (tenant-qualified)
    conversation_id: str | None
    question: str
    history: list[dict[str, str]]  # the conversation turns before the question (follow-ups)
    search_query: str
    chunks: list[dict[str, Any]]  # rank, chunk_id, document_id, score, title, source
    prompt: str
    model: str
    params: dict[str, Any]  # max_tokens, temperature
    retrieval: dict[str, Any]
    answer: str
    citations: list[dict[str, Any]]
    finish_reason: str | None
    outcome: str
    grounding: float | None
    usage: dict[str, int]
    latency_ms: dict[str, float | None]  # retrieve, ttft, total
    experiment: str | None = None  # the experiment that assigned the answer an arm (issue 24)
    arm: str | None = None
    unit: str | None = None  # what it was assigned by: a conversation id, or a key id
    cost: float | None = None  # estimated from the model's prices (0 for a local model)
    judge: dict[str, float] | None = None  # online judge scores, when sampled
    feedback: list[Feedback] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)  # engagement counts by type

    @property
    def collection_version(self) -> str:
        """The collection version that answered (blue/green), as recorded with the retrieval settings."""
        return str(self.retrieval.get("collection_version", "v1"))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "collection_version": self.collection_version}


@runtime_checkable
class TraceStore(Protocol):
    async def record(self, trace: Trace) -> None:
        """Store a new trace."""
        ...

    async def get(self, response_id: str) -> Trace | None:
        """The trace with its feedback and event counts; None when unknown."""
        ...

    async def put_feedback(self, response_id: str, feedback: Feedback) -> Feedback:
        """Store `feedback.caller`'s feedback (replacing its earlier one); KeyError when unknown."""
        ...

    async def add_event(self, response_id: str, caller: str, kind: str, citation: int | None) -> None:
        """Append an engagement event; KeyError for an unknown response."""
        ...

    async def set_judge(self, response_id: str, scores: dict[str, float]) -> None:
        """Attach online judge scores."""
        ...

    async def search(
        self,
        *,
        since: float | None = None,
        collections: list[str] | None = None,
        rating: str | None = None,
        limit: int = 1000,
        tenant: str | None = None,
        experiment: str | None = None,
    ) -> list[Trace]:
        """Traces newest first: created since `since`, in `collections`, with a feedback of `rating`,
        of `tenant`, assigned an arm by `experiment`."""
        ...

    async def delete_older_than(self, created_before: float) -> int:
        """Retention: delete traces (with their feedback and events) created before; how many."""
        ...

    async def aclose(self) -> None: ...


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class SQLTraceStore:
    """`TraceStore` on the system-of-record engine (already migrated)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        def _transaction() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return await asyncio.to_thread(_transaction)

    async def record(self, trace: Trace) -> None:
        row = {
            "response_id": trace.response_id,
            "created_at": trace.created_at,
            "api": trace.api,
            "tenant": trace.tenant,
            "key_id": trace.key_id,
            "collection": trace.collection,
            "conversation_id": trace.conversation_id,
            "question": trace.question,
            "history_json": _dumps(trace.history),
            "search_query": trace.search_query,
            "chunks_json": _dumps(trace.chunks),
            "prompt": trace.prompt,
            "model": trace.model,
            "params_json": _dumps(trace.params),
            "retrieval_json": _dumps(trace.retrieval),
            "answer": trace.answer,
            "citations_json": _dumps(trace.citations),
            "finish_reason": trace.finish_reason,
            "outcome": trace.outcome,
            "grounding": trace.grounding,
            "prompt_tokens": trace.usage.get("prompt_tokens", 0),
            "completion_tokens": trace.usage.get("completion_tokens", 0),
            "retrieve_ms": trace.latency_ms.get("retrieve"),
            "ttft_ms": trace.latency_ms.get("ttft"),
            "total_ms": trace.latency_ms.get("total"),
            "experiment": trace.experiment,
            "arm": trace.arm,
            "unit": trace.unit,
            "cost": trace.cost,
            "judge_json": _dumps(trace.judge) if trace.judge is not None else None,
        }
        await self._run(lambda conn: conn.execute(sa.insert(responses_t), row))

    async def get(self, response_id: str) -> Trace | None:
        found = await self._traces(responses_t.c.response_id == canonical_response_id(response_id), limit=1)
        return found[0] if found else None

    async def put_feedback(self, response_id: str, feedback: Feedback) -> Feedback:
        rid = canonical_response_id(response_id)
        now = time.time()

        def _put(conn: Connection) -> Feedback:
            _must_exist(conn, rid)
            key = sa.and_(feedback_t.c.response_id == rid, feedback_t.c.caller == feedback.caller)
            earlier = conn.execute(sa.select(feedback_t.c.created_at).where(key)).scalar_one_or_none()
            conn.execute(sa.delete(feedback_t).where(key))
            feedback.created_at = earlier if earlier is not None else now
            feedback.updated_at = now
            conn.execute(
                sa.insert(feedback_t),
                {
                    "response_id": rid,
                    "caller": feedback.caller,
                    "rating": feedback.rating,
                    "score": feedback.score,
                    "comment": feedback.comment,
                    "correction": feedback.correction,
                    "tags_json": _dumps(feedback.tags),
                    "reviewed": feedback.reviewed,
                    "created_at": feedback.created_at,
                    "updated_at": feedback.updated_at,
                },
            )
            return feedback

        return await self._run(_put)

    async def add_event(self, response_id: str, caller: str, kind: str, citation: int | None) -> None:
        rid = canonical_response_id(response_id)

        def _add(conn: Connection) -> None:
            _must_exist(conn, rid)
            conn.execute(
                sa.insert(events_t),
                {"response_id": rid, "caller": caller, "type": kind, "citation": citation, "at": time.time()},
            )

        await self._run(_add)

    async def set_judge(self, response_id: str, scores: dict[str, float]) -> None:
        change = (
            sa.update(responses_t)
            .where(responses_t.c.response_id == canonical_response_id(response_id))
            .values(judge_json=_dumps(scores))
        )
        await self._run(lambda conn: conn.execute(change))

    async def search(
        self,
        *,
        since: float | None = None,
        collections: list[str] | None = None,
        rating: str | None = None,
        limit: int = 1000,
        tenant: str | None = None,
        experiment: str | None = None,
    ) -> list[Trace]:
        where: list[Any] = []
        if tenant is not None:
            where.append(responses_t.c.tenant == tenant)
        if experiment is not None:
            where.append(responses_t.c.experiment == experiment)
        if since is not None:
            where.append(responses_t.c.created_at >= since)
        if collections is not None:
            where.append(responses_t.c.collection.in_(collections))
        if rating is not None:
            rated = sa.select(feedback_t.c.response_id).where(feedback_t.c.rating == rating)
            where.append(responses_t.c.response_id.in_(rated))
        return await self._traces(sa.and_(sa.true(), *where), limit=limit)

    async def delete_older_than(self, created_before: float) -> int:
        def _delete(conn: Connection) -> int:
            old = sa.select(responses_t.c.response_id).where(responses_t.c.created_at < created_before)
            conn.execute(sa.delete(feedback_t).where(feedback_t.c.response_id.in_(old)))
            conn.execute(sa.delete(events_t).where(events_t.c.response_id.in_(old)))
            return int(
                conn.execute(sa.delete(responses_t).where(responses_t.c.created_at < created_before)).rowcount
            )

        return await self._run(_delete)

    async def aclose(self) -> None:
        """The engine belongs to the container."""

    async def _traces(self, where: Any, *, limit: int) -> list[Trace]:
        def _read(conn: Connection) -> list[Trace]:
            rows = conn.execute(
                sa.select(responses_t).where(where).order_by(responses_t.c.created_at.desc()).limit(limit)
            ).all()
            if not rows:
                return []
            ids = [r.response_id for r in rows]
            feedback: dict[str, list[Feedback]] = {}
            for f in conn.execute(
                sa.select(feedback_t)
                .where(feedback_t.c.response_id.in_(ids))
                .order_by(feedback_t.c.created_at)
            ):
                feedback.setdefault(f.response_id, []).append(
                    Feedback(
                        caller=f.caller,
                        rating=f.rating,
                        score=f.score,
                        comment=f.comment,
                        correction=f.correction,
                        tags=json.loads(f.tags_json or "[]"),
                        reviewed=bool(f.reviewed),
                        created_at=f.created_at,
                        updated_at=f.updated_at,
                    )
                )
            events: dict[str, dict[str, int]] = {}
            counted = (
                sa.select(events_t.c.response_id, events_t.c.type, sa.func.count())
                .where(events_t.c.response_id.in_(ids))
                .group_by(events_t.c.response_id, events_t.c.type)
            )
            for rid, kind, n in conn.execute(counted):
                events.setdefault(rid, {})[kind] = int(n)
            return [_trace(r, feedback.get(r.response_id, []), events.get(r.response_id, {})) for r in rows]

        return await asyncio.to_thread(lambda: _with_connection(self.engine, _read))


def _with_connection(engine: Engine, fn: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return fn(conn)


def _must_exist(conn: Connection, response_id: str) -> None:
    found = conn.execute(
        sa.select(responses_t.c.response_id).where(responses_t.c.response_id == response_id)
    ).scalar_one_or_none()
    if found is None:
        raise KeyError(f"unknown response {response_id}")


def _trace(r: Any, feedback: list[Feedback], events: dict[str, int]) -> Trace:
    return Trace(
        response_id=r.response_id,
        created_at=r.created_at,
        api=r.api,
        tenant=r.tenant,
        key_id=r.key_id,
        collection=r.collection,
        conversation_id=r.conversation_id,
        question=r.question,
        history=json.loads(r.history_json),
        search_query=r.search_query,
        chunks=json.loads(r.chunks_json),
        prompt=r.prompt,
        model=r.model,
        params=json.loads(r.params_json),
        retrieval=json.loads(r.retrieval_json),
        answer=r.answer,
        citations=json.loads(r.citations_json),
        finish_reason=r.finish_reason,
        outcome=r.outcome,
        grounding=r.grounding,
        usage={"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
        latency_ms={"retrieve": r.retrieve_ms, "ttft": r.ttft_ms, "total": r.total_ms},
        experiment=r.experiment,
        arm=r.arm,
        unit=r.unit,
        cost=r.cost,
        judge=json.loads(r.judge_json) if r.judge_json else None,
        feedback=feedback,
        events=events,
    )
