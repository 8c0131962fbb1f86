"""Retrieval for the server: async, off the event loop, with collection checks and metrics."""

from __future__ import annotations

import asyncio
import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.auth.principal import Principal
from app.services.limits import check_filters
from app.services.metrics import Metrics
from app.settings import Settings
from app.telemetry import tracer
from ingest.types import ScoredChunk
from ingest.vector_index import CollectionNotFound

if TYPE_CHECKING:
    from app.services.collection_versions import CollectionVersions, Serving


@dataclass
class Retrieved:
    """Hits, and the collection version (physical collection) every one of them came from."""

    hits: list[ScoredChunk]
    version: str  # "v1", "v2", ...
    physical: str


class RetrievalService:
    """Runs the (blocking) retriever in its own thread pool so concurrent requests overlap and
    their query embeddings can be micro-batched."""

    def __init__(self, settings: Settings, versions: CollectionVersions, metrics: Metrics):
        self.settings = settings
        self.versions = versions
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="retrieve")

    async def resolve_collection(self, name: str | None, *, principal: Principal) -> str:
        """The store name of `principal`'s collection `name` (None: the default collection); raises
        CollectionNotFound for one that does not exist or that the key may not touch. The vector index
        is asked off the event loop (a remote Chroma that answers slowly must not stall other requests)."""
        store = principal.collection(name or self.settings.server.default_collection)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._pool, self.versions.exists, store):
            raise CollectionNotFound(
                f"collection {name or self.settings.server.default_collection!r} not found"
            )
        return store

    async def visible_collections(self, principal: Principal) -> list[str]:
        """The collections `principal` may see, by the names it uses."""
        loop = asyncio.get_running_loop()
        stores = await loop.run_in_executor(self._pool, self.versions.collections)
        return sorted(n for n in (principal.visible(s) for s in stores) if n is not None)

    def resolve_mode(self, mode: str | None) -> str:
        """The retrieval mode a request runs: its own, else the settings' default."""
        return mode or self.settings.retrieval.mode

    async def retrieve(
        self,
        collection: str,
        query: str,
        *,
        top_k: int,
        mode: str | None = None,
        filters: dict[str, Any] | None = None,
        fusion: dict[str, Any] | None = None,
    ) -> Retrieved:
        """The top_k chunks of the collection's serving version (resolved once: every hit comes from
        the one physical collection, even while a rebuild switches the alias). `fusion`: FusionConfig
        fields a collection's answer profile (or an experiment arm) changes."""
        check_filters(filters, self.settings.limits)  # before the store sees it (400 past a limit)
        mode = self.resolve_mode(mode)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        attributes: dict[str, str | int] = {
            "ragserver.collection": collection,
            "ragserver.retrieval.mode": mode,
            "ragserver.top_k": top_k,
        }
        with tracer().start_as_current_span("retrieval", attributes=attributes) as span:
            # The worker thread runs in this context, so the embedding span nests under this one.
            context = contextvars.copy_context()
            hits, serving = await loop.run_in_executor(
                self._pool,
                lambda: context.run(self._retrieve, collection, query, top_k, mode, filters, fusion or {}),
            )
            span.set_attribute("ragserver.hits", len(hits))
            span.set_attribute("ragserver.collection_version", serving.label)
        self.metrics.retrieval_latency.labels(mode=mode).observe(time.perf_counter() - started)
        return Retrieved(hits, serving.label, serving.physical)

    def _retrieve(
        self,
        collection: str,
        query: str,
        top_k: int,
        mode: str,
        filters: dict[str, Any] | None,
        fusion: dict[str, Any],
    ) -> tuple[list[ScoredChunk], Serving]:
        serving = self.versions.serving(collection)
        retriever = serving.retriever.with_fusion(**fusion) if fusion else serving.retriever
        hits = retriever.retrieve(serving.physical, query, top_k=top_k, mode=mode, filters=filters)
        return hits, serving

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
