"""Response traces, feedback and engagement events behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.db import make_engine, migrate
from app.traces.store import (
    Feedback,
    SQLTraceStore,
    Trace,
    TraceStore,
    canonical_response_id,
)
from tests.conftest_services import temporary_postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLTraceStore]:
    engine: Engine
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'ragserver.sqlite3'}")
        migrate(engine)
        yield SQLTraceStore(engine)
        engine.dispose()
        return
    postgres_url = request.getfixturevalue("postgres_url")
    with temporary_postgres_database(postgres_url) as url:
        engine = make_engine(url)
        migrate(engine)
        yield SQLTraceStore(engine)
        engine.dispose()


def trace(rid: str, *, collection: str = "kb", created_at: float | None = None) -> Trace:
    return Trace(
        response_id=rid,
        created_at=time.time() if created_at is None else created_at,
        api="chat",
        tenant="default",
        key_id=None,
        collection=collection,
        conversation_id="c1",
        question="Where is Etna? Zoë asks",
        history=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        search_query="Where is Etna?",
        chunks=[{"rank": 1, "chunk_id": "d1::v::0", "document_id": "d1", "score": 0.8, "title": "Etna"}],
        prompt="answer@v1",
        model="scripted",
        params={"max_tokens": 64, "temperature": 0.0},
        retrieval={"mode": "hybrid", "top_k": 5},
        answer="In Sicily [1].",
        citations=[{"n": 1, "document_id": "d1"}],
        finish_reason="stop",
        outcome="answered",
        grounding=1.0,
        usage={"prompt_tokens": 100, "completion_tokens": 5},
        latency_ms={"retrieve": 12.5, "ttft": 40.0, "total": 90.0},
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_is_a_response_store(store: SQLTraceStore) -> None:
    assert isinstance(store, TraceStore)


def test_trace_round_trips_under_every_id(store: SQLTraceStore) -> None:
    original = trace("resp_abc")
    run(store.record(original))
    for name in ("resp_abc", "chatcmpl-abc", "cmpl-abc"):
        assert run(store.get(name)) == original
    assert run(store.get("resp_nope")) is None
    assert canonical_response_id("chatcmpl-x") == "resp_x" and canonical_response_id("other") == "other"


def test_feedback_replaces_per_caller_and_events_count(store: SQLTraceStore) -> None:
    run(store.record(trace("resp_1")))
    first = run(store.put_feedback("resp_1", Feedback(caller="key_a", rating="down", comment="wrong")))
    run(store.put_feedback("resp_1", Feedback(caller="key_b", rating="up", tags=["good"])))
    time.sleep(0.01)
    again = run(store.put_feedback("chatcmpl-1", Feedback(caller="key_a", score=0.2, correction="Sicily.")))
    assert again.created_at == first.created_at and again.updated_at > first.updated_at
    got = run(store.get("resp_1"))
    assert got is not None
    by_caller = {f.caller: f for f in got.feedback}
    assert set(by_caller) == {"key_a", "key_b"}
    assert by_caller["key_a"].rating is None and by_caller["key_a"].correction == "Sicily."
    assert by_caller["key_b"].tags == ["good"]
    for kind in ("citation_opened", "citation_opened", "copied"):
        run(store.add_event("resp_1", "key_a", kind, 1 if kind == "citation_opened" else None))
    assert run(store.get("resp_1")).events == {"citation_opened": 2, "copied": 1}  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        run(store.put_feedback("resp_missing", Feedback(caller="x", rating="up")))
    with pytest.raises(KeyError):
        run(store.add_event("resp_missing", "x", "copied", None))


def test_search_filters_and_retention(store: SQLTraceStore) -> None:
    now = time.time()
    run(store.record(trace("resp_old", created_at=now - 10 * 86400)))
    run(store.record(trace("resp_kb", created_at=now - 60)))
    run(store.record(trace("resp_hr", collection="acme.hr", created_at=now - 30)))
    run(store.put_feedback("resp_kb", Feedback(caller="a", rating="down")))
    run(store.put_feedback("resp_hr", Feedback(caller="a", rating="up")))
    assert [t.response_id for t in run(store.search())] == ["resp_hr", "resp_kb", "resp_old"]
    assert [t.response_id for t in run(store.search(since=now - 86400))] == ["resp_hr", "resp_kb"]
    assert [t.response_id for t in run(store.search(collections=["kb"]))] == ["resp_kb", "resp_old"]
    assert [t.response_id for t in run(store.search(rating="down"))] == ["resp_kb"]
    assert run(store.search(collections=[])) == []
    run(store.set_judge("resp_kb", {"faithfulness": 0.5}))
    assert run(store.get("resp_kb")).judge == {"faithfulness": 0.5}  # type: ignore[union-attr]
    assert run(store.delete_older_than(now - 86400)) == 1
    assert run(store.get("resp_old")) is None and run(store.get("resp_kb")) is not None
