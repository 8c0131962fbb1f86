"""BM25 on every replica through the Redis change feed (`retrieval.bm25_feed = redis`), in one process:
two "replicas" with data dirs of their own over one Chroma server and one Redis stream. A write on one
reaches the other's BM25 without re-deriving anything from the store; a replica that joins late checks
once and catches up. (The same across real processes: tests/e2e/test_cluster.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.container import Container
from app.settings import Settings
from ingest.types import Segment, SourceDocument
from tests.conftest_services import *  # noqa: F403

pytestmark = pytest.mark.integration

COLLECTION = "feed"


def replica(data_dir: Path, chroma: str, redis_url: str, stream: str, embedder, query_embedder) -> Container:  # type: ignore[no-untyped-def]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        chroma={"url": chroma},
        history={"redis_url": redis_url},
        retrieval={"bm25_feed": "redis", "bm25_feed_stream": stream},
    )
    return Container(settings, embedder=embedder, query_embedder=query_embedder)


def doc(doc_id: str, text: str) -> SourceDocument:
    return SourceDocument(
        doc_id=doc_id, source=f"{doc_id}.txt", title=doc_id, segments=[Segment(text)], metadata={}
    )


def bm25_ids(c: Container, word: str) -> list[str]:
    return [hit.doc_id for hit in c.retriever.retrieve(COLLECTION, word, top_k=5, mode="bm25")]


def eventually(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_changes_reach_every_replica_without_rebuilds(
    tmp_path: Path, chroma_server_url: str, redis_url: str, redis_key_prefix: str, embedder, query_embedder
) -> None:
    stream = f"{redis_key_prefix}bm25"
    collection = f"{COLLECTION}"
    a = replica(tmp_path / "a", chroma_server_url, redis_url, stream, embedder, query_embedder)
    b = replica(tmp_path / "b", chroma_server_url, redis_url, stream, embedder, query_embedder)
    try:
        a.store.drop_collection(collection) if a.store.has_collection(collection) else None
        a.pipeline.ingest([doc("etna", "Etna erupts in Sicily."), doc("fuji", "Fuji is quiet.")], collection)
        b.retriever  # noqa: B018 - b follows the feed from now on
        eventually(lambda: bm25_ids(b, "Sicily") == ["etna"])
        # A change written by a: a document added, one deleted.
        a.pipeline.ingest([doc("vesuvius", "Vesuvius buried Pompeii.")], collection)
        a.pipeline.delete(collection, ["fuji"])
        eventually(lambda: bm25_ids(b, "Pompeii") == ["vesuvius"] and bm25_ids(b, "Fuji") == [])
        # a's own index follows the feed too (its pipeline publishes rather than writing locally).
        eventually(lambda: bm25_ids(a, "Pompeii") == ["vesuvius"])
        rebuilt = b.metrics.bm25_full_rebuilds._value.get()
        assert rebuilt <= 1  # at most b's first-load check, never one per change
        b.pipeline.ingest([doc("stromboli", "Stromboli glows at night.")], collection)
        eventually(lambda: bm25_ids(a, "glows") == ["stromboli"])
        assert b.metrics.bm25_full_rebuilds._value.get() == rebuilt

        # A replica joining late: its first load checks against the store and catches up, once.
        late = replica(tmp_path / "late", chroma_server_url, redis_url, stream, embedder, query_embedder)
        try:
            assert sorted(bm25_ids(late, "Pompeii Sicily glows")) == ["etna", "stromboli", "vesuvius"]
            assert late.metrics.bm25_full_rebuilds._value.get() == 1
            a.pipeline.delete(collection, ["etna"])
            eventually(lambda: bm25_ids(late, "Sicily") == [])
            assert late.metrics.bm25_full_rebuilds._value.get() == 1
        finally:
            late.bm25_feed.stop()  # type: ignore[union-attr]
    finally:
        for c in (a, b):
            if c.bm25_feed is not None:
                c.bm25_feed.stop()
