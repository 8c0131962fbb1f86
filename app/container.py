"""The composition root: the one place that builds every backend and service.

`open_container()` is the one async context manager that opens a `Container` and closes what it
built; the server lifespan, every CLI command (through `open_container_sync`), the eval harness and
the worker all go through it, so they run the same object graph. Each backend sits behind a Protocol
(`VectorIndex`, `Embedder`, `LLM`, `HistoryStore`, `JobStore`) and is chosen here from the settings.

Everything is built on first use and then kept, so a CLI command that lists documents never loads a
model; `warm()` builds the heavy parts up front (the server calls it before taking requests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from app.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from app.auth.admin import KeyAdmin
    from app.auth.audit import AuditLog
    from app.auth.authenticator import Authenticator
    from app.auth.keys import KeyStore
    from app.auth.rate_limits import RateLimits
    from app.history.base import HistoryStore
    from app.jobs.base import JobStore
    from app.jobs.queue import ArqJobQueue
    from app.jobs.runner import JobRunner
    from app.llm.base import LLM
    from app.llm.registry import ModelRegistry
    from app.prompting import PromptRegistry
    from app.retrieval.bm25_feed import BM25Feed
    from app.retrieval.bm25_index import BM25Index
    from app.retrieval.retriever import Retriever
    from app.services.answer_profiles import ProfileService
    from app.services.chat_service import ChatService
    from app.services.collection_versions import CollectionVersions
    from app.services.document_labels import DocumentLabels
    from app.services.document_service import DocumentService
    from app.services.experiments import ExperimentService
    from app.services.metrics import Metrics
    from app.services.online_judge import OnlineJudge
    from app.services.retrieval_service import RetrievalService
    from app.services.routing import RoutingService
    from app.services.traces import TraceService
    from app.storage import UploadStorage
    from app.traces.store import TraceStore
    from ingest.chunking import Chunker
    from ingest.embedder import Embedder
    from ingest.pipeline import IngestPipeline
    from ingest.vector_index import VectorIndex

log = logging.getLogger(__name__)


# Parts that outlive a close: costly to build and holding nothing of one opening (the vector store's
# client, the models, the pipeline and retriever over them, BM25, prompts, metrics, upload storage and the
# rate-limit counters). Every other part is forgotten at close, so opening the container again rebuilds it.
KEPT_ACROSS_OPENINGS = frozenset(
    {
        "store",
        "embedder",
        "query_embedder",
        "document_embedder",
        "chunker",
        "pipeline",
        "retriever",
        "bm25",
        "prompts",
        "metrics",
        "storage",
        "rate_limits",
    }
)


class Container:
    """Lazily built backends and services for one Settings.

    Tests may hand in already loaded models (`embedder`, `query_embedder`) or an LLM to share them.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        llm: LLM | None = None,
        embedder: Embedder | None = None,
        query_embedder: Embedder | None = None,
    ):
        self.settings = settings or Settings()
        # cached_property reads the instance dict first: injected parts are used as built.
        for name, given in (("llm", llm), ("embedder", embedder), ("query_embedder", query_embedder)):
            if given is not None:
                self.__dict__[name] = given
        self._injected = {name for name in ("llm", "embedder", "query_embedder") if name in self.__dict__}
        self._versions_lock = threading.Lock()
        self._version_embedders: dict[str, Embedder] = {}
        self._version_retrievers: dict[str, Retriever] = {}
        self._version_pipelines: dict[tuple[str | None, int, int], IngestPipeline] = {}
        # Nothing may reach a model hub at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # pypdf logs every recoverable oddity of a PDF; ragserver reports what it could not read.
        logging.getLogger("pypdf").setLevel(logging.ERROR)

    # -- backends ------------------------------------------------------------------------------

    @cached_property
    def store(self) -> VectorIndex:
        """Chroma: embedded under the data dir, or the server at `chroma.url`. With `chroma.url =
        memory://`, an in-memory index instead (`ingest.memory_index`): it holds nothing across restarts
        and is private to this process (a worker elsewhere sees none of it), so it is for tests and demos."""
        from ingest.memory_index import MEMORY_URL, MemoryIndex

        s = self.settings
        if s.chroma.url == MEMORY_URL:
            return MemoryIndex()
        from ingest.chroma_index import ChromaIndex

        if not s.chroma.url:
            s.chroma_path.mkdir(parents=True, exist_ok=True)
        return ChromaIndex.open(url=s.chroma.url, path=str(s.chroma_path))

    @cached_property
    def embedder(self) -> Embedder:
        from ingest.embedder import build_embedder

        return build_embedder(self.settings.embedding)

    @cached_property
    def query_embedder(self) -> Embedder:
        """What embeds queries: the ONNX twin of the local model by default (see settings)."""
        from ingest.onnx_encoder import build_query_embedder

        s = self.settings
        return build_query_embedder(s.embedding, self.embedder, s.models_dir, threads=_query_threads(s))

    @cached_property
    def document_embedder(self) -> Embedder:
        """What embeds documents at ingestion: the embedder itself (torch), or its ONNX twin."""
        from ingest.onnx_encoder import build_document_embedder

        return build_document_embedder(self.settings.embedding, self.embedder, self.settings.models_dir)

    @cached_property
    def chunker(self) -> Chunker:
        from ingest.chunking import Chunker

        c = self.settings.chunking
        return Chunker(c.chunk_size, c.chunk_overlap, self.embedder.count_tokens)

    @cached_property
    def bm25(self) -> BM25Index:
        """BM25, derived from the vector index and kept in step by the pipeline."""
        from app.retrieval.bm25_index import build_bm25_index

        return build_bm25_index(
            self.settings, self.store, on_full_rebuild=self.metrics.bm25_full_rebuilds.inc
        )

    @cached_property
    def bm25_feed(self) -> BM25Feed | None:
        """With `retrieval.bm25_feed = redis`: the change feed every replica's BM25 index follows."""
        if self.settings.retrieval.bm25_feed != "redis":
            return None
        from app.retrieval.bm25_feed import BM25Feed

        url = self.settings.shared_redis_url
        if not url:
            raise ValueError(
                "retrieval.bm25_feed=redis needs a Redis: set RAGSERVER_REDIS_URL or jobs.redis_url"
            )
        stream = self.settings.retrieval.bm25_feed_stream
        return BM25Feed(url, self.bm25, stream=stream, on_lag=self.metrics.bm25_feed_lag.set)

    @cached_property
    def pipeline(self) -> IngestPipeline:
        from ingest.pipeline import IngestPipeline

        # With a feed, changes reach this process's index (and every other) through the feed.
        listener = self.bm25_feed.publisher if self.bm25_feed is not None else self.bm25
        return IngestPipeline(
            self.store,
            self.document_embedder,
            self.chunker,
            listeners=[listener],
            labeler=lambda collection, doc: self.document_labels.label(collection, doc),
        )

    @cached_property
    def retriever(self) -> Retriever:
        from app.retrieval.retriever import build_retriever

        if self.bm25_feed is not None:  # this process searches: follow everyone's BM25 changes
            self.bm25_feed.follow()
        return build_retriever(self.settings.retrieval, self.store, self.query_embedder, self.bm25)

    # -- per collection version (blue/green: a version may use another model or chunking) --------------

    def _model_key(self, model_path: str | None) -> str | None:
        return None if not model_path or model_path == self.settings.embedding.model_path else model_path

    def embedder_for(self, model_path: str | None) -> Embedder:
        """The embedder of a collection version's model (None: the configured one), loaded once."""
        key = self._model_key(model_path)
        if key is None:
            return self.embedder
        with self._versions_lock:
            if key not in self._version_embedders:
                from ingest.embedder import SentenceTransformerEmbedder

                e = self.settings.embedding
                self._version_embedders[key] = SentenceTransformerEmbedder(key, e.batch_size, e.device)
            return self._version_embedders[key]

    def retriever_for(self, model_path: str | None) -> Retriever:
        """The retriever for a collection version embedded with `model_path` (its own query encoder)."""
        key = self._model_key(model_path)
        if key is None:
            return self.retriever
        with self._versions_lock:
            found = self._version_retrievers.get(key)
        if found is not None:
            return found
        from app.retrieval.retriever import build_retriever
        from ingest.onnx_encoder import build_query_embedder

        s = self.settings
        query = build_query_embedder(
            s.embedding, self.embedder_for(key), s.models_dir, threads=_query_threads(s)
        )
        built = build_retriever(s.retrieval, self.store, query, self.bm25)
        with self._versions_lock:
            return self._version_retrievers.setdefault(key, built)

    def pipeline_for(
        self, model_path: str | None, chunk_size: int | None = None, chunk_overlap: int | None = None
    ) -> IngestPipeline:
        """The pipeline writing a collection version: its model and chunking (None: the configured)."""
        key = self._model_key(model_path)
        c = self.settings.chunking
        size = c.chunk_size if chunk_size is None else chunk_size
        overlap = c.chunk_overlap if chunk_overlap is None else chunk_overlap
        if key is None and (size, overlap) == (c.chunk_size, c.chunk_overlap):
            return self.pipeline
        from ingest.chunking import Chunker
        from ingest.onnx_encoder import build_document_embedder
        from ingest.pipeline import IngestPipeline

        if overlap >= size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        with self._versions_lock:
            cached = self._version_pipelines.get((key, size, overlap))
        if cached is not None:
            return cached
        embedder = self.embedder_for(key)
        documents = (
            self.document_embedder
            if key is None
            else build_document_embedder(self.settings.embedding, embedder, self.settings.models_dir)
        )
        listener = self.bm25_feed.publisher if self.bm25_feed is not None else self.bm25
        built = IngestPipeline(
            self.store,
            documents,
            Chunker(size, overlap, embedder.count_tokens),
            listeners=[listener],
            labeler=lambda collection, doc: self.document_labels.label(collection, doc),
        )
        with self._versions_lock:
            return self._version_pipelines.setdefault((key, size, overlap), built)

    @property
    def model_roots(self) -> list[Path]:
        """Where model directories a tenant's admin names may lie (`collections.model_roots`)."""
        from app.services.model_paths import resolve_roots

        roots = self.settings.collections.model_roots
        return resolve_roots([self.settings.data_dir / "models"] if roots is None else roots)

    @cached_property
    def versions(self) -> CollectionVersions:
        """Blue/green collections: aliases to versions, rebuilds, rollbacks, prunes."""
        from app.services.collection_versions import CollectionVersions, VersionRegistry

        return CollectionVersions(
            self.store,
            VersionRegistry(self.database),
            self.pipeline_for,
            self.retriever_for,
            alias_ttl_s=self.settings.collections.alias_ttl_s,
            on_drop=self.bm25.drop,
            model_roots=self.model_roots,
            load_model=self.embedder_for,
        )

    @cached_property
    def llm(self) -> LLM:
        from app.llm.factory import build_llm

        return build_llm(self.settings.llm, self.settings.models_dir)

    @cached_property
    def models(self) -> ModelRegistry:
        """Every LLM a request, profile or experiment arm may name; `llm` is its default model."""
        from app.llm.registry import ModelRegistry, ModelStore

        return ModelRegistry(
            self.settings, lambda: ModelStore(self.database), lambda: self.llm, audit=lambda: self.audit
        )

    @cached_property
    def profiles(self) -> ProfileService:
        """Collections' answer profiles (prompt, model, retrieval settings)."""
        from app.services.answer_profiles import ProfileService, ProfileStore

        return ProfileService(
            self.settings,
            ProfileStore(self.database),
            models=self.models,
            prompts=self.prompts,
            retrieval=self.retrieval,
            audit=self.audit,
        )

    @cached_property
    def experiments(self) -> ExperimentService:
        """A/B experiments: enrollment, reports, guardrails."""
        from app.experiments.store import ExperimentStore
        from app.services.experiments import ExperimentService

        return ExperimentService(
            self.settings,
            ExperimentStore(self.database),
            profiles=self.profiles,
            traces=self.trace_store,
            retrieval=self.retrieval,
            metrics=self.metrics,
            audit=self.audit,
        )

    @cached_property
    def routing(self) -> RoutingService:
        """Collections' routing chains (rules, curated answers, model policy) and curated answers."""
        from app.routing.store import ChainStore, CuratedStore
        from app.services.routing import RoutingService

        def documents(store: str, ids: list[str]) -> dict[str, str]:
            serving = self.versions.serving(store)
            return {d: r.content_hash for d, r in self.store.get_documents(serving.physical, ids).items()}

        return RoutingService(
            self.settings,
            ChainStore(self.database),
            CuratedStore(self.database),
            self.metrics,
            embed=lambda texts: self.query_embedder.embed(texts),
            embedder_id=lambda: self.query_embedder.model_id,
            documents=documents,
            model_roots=self.model_roots,
            retrieval=self.retrieval,
            models=self.models,
            profiles=self.profiles,
            audit=self.audit,
        )

    @cached_property
    def document_labels(self) -> DocumentLabels:
        """Collections' document labelers (a label written into each document's metadata at ingestion)."""
        from app.services.document_labels import DocumentLabels

        return DocumentLabels(
            self.settings,
            self.database,
            embed=lambda texts: self.query_embedder.embed(texts),
            embedder_id=lambda: self.query_embedder.model_id,
            classifier=lambda path: self.routing.classifier(path),
            retrieval=self.retrieval,
            audit=self.audit,
        )

    @cached_property
    def prompts(self) -> PromptRegistry:
        from app.prompting import PromptRegistry

        prompts = PromptRegistry(self.settings.prompts_dir)
        # Fail at start-up, not on the first request, when the default prompts are wrong.
        prompts.get(self.settings.prompts.answer)
        prompts.get(self.settings.prompts.condense)
        return prompts

    @cached_property
    def history(self) -> HistoryStore:
        from app.history.factory import build_history_store

        return build_history_store(self.settings)

    @cached_property
    def jobs(self) -> JobStore:
        from app.jobs.factory import build_job_store

        return build_job_store(self.settings)

    @cached_property
    def storage(self) -> UploadStorage:
        from app.storage import build_storage

        return build_storage(self.settings)

    @cached_property
    def job_queue(self) -> ArqJobQueue | None:
        """With `jobs.runner = queue`: the arq queue `ragserver worker` processes consume."""
        if self.settings.jobs.runner != "queue":
            return None
        from app.jobs.queue import ArqJobQueue

        url = self.settings.shared_redis_url
        if not url:
            raise ValueError(
                "jobs.runner=queue needs a Redis: set RAGSERVER_REDIS_URL or RAGSERVER_JOBS__REDIS_URL"
            )
        return ArqJobQueue(url, self.settings.jobs.queue_name)

    @cached_property
    def trace_store(self) -> TraceStore:
        from app.traces.store import SQLTraceStore

        return SQLTraceStore(self.database)

    @cached_property
    def traces(self) -> TraceService:
        from app.services.traces import TraceService

        return TraceService(
            self.settings,
            self.trace_store,
            self.metrics,
            judge=self.online_judge,
            on_feedback=lambda trace, feedback: self.routing.candidate_from_feedback(trace, feedback),
        )

    @cached_property
    def online_judge(self) -> OnlineJudge | None:
        """With `judge.base_url`: scores a sampled share of live answers in the background."""
        if not self.settings.judge.base_url:
            return None
        from app.services.online_judge import OnlineJudge

        return OnlineJudge(self.settings.judge, lambda: self.embedder, self.trace_store, self.metrics)

    @cached_property
    def database(self) -> Engine:
        """The relational system of record (keys, audit log), migrated to the newest schema."""
        from app.db import make_engine, migrate

        engine = make_engine(self.settings.database_url)
        migrate(engine)
        return engine

    @cached_property
    def keys(self) -> KeyStore:
        from app.auth.keys import KeyStore

        return KeyStore(self.database)

    @cached_property
    def audit(self) -> AuditLog:
        from app.auth.audit import AuditLog

        return AuditLog(self.database, on_failure=self.metrics.audit_failures.inc)

    @cached_property
    def authenticator(self) -> Authenticator:
        from app.auth.authenticator import Authenticator

        return Authenticator(self.settings.auth, self.keys)

    @cached_property
    def key_admin(self) -> KeyAdmin:
        from app.auth.admin import KeyAdmin

        return KeyAdmin(self.keys, self.audit, self.authenticator, self.settings.auth)

    @cached_property
    def rate_limits(self) -> RateLimits:
        from app.auth.rate_limits import RateLimits

        return RateLimits(self.settings, self.metrics)

    @cached_property
    def metrics(self) -> Metrics:
        from app.services.metrics import Metrics

        return Metrics()

    # -- services ------------------------------------------------------------------------------

    @cached_property
    def retrieval(self) -> RetrievalService:
        from app.services.retrieval_service import RetrievalService

        return RetrievalService(self.settings, self.versions, self.metrics)

    @cached_property
    def documents(self) -> DocumentService:
        from app.services.document_service import DocumentService

        return DocumentService(
            self.settings,
            self.store,
            self.versions,
            self.jobs,
            self.runner,
            audit=self.audit,
            document_id_key=self.keys.secret("document_id_key"),
            storage=self.storage,
        )

    @cached_property
    def runner(self) -> JobRunner:
        """Claims and runs ingestion jobs (in the server with the in-process runner; in `ragserver
        worker` processes with the queue)."""
        from app.jobs.runner import JobRunner

        return JobRunner(
            self.settings,
            self.jobs,
            self.storage,
            self.versions,
            self.store,
            self.metrics,
            queue=self.job_queue,
            arriving=lambda: self.documents.arriving(),
        )

    @cached_property
    def chat(self) -> ChatService:
        from app.services.chat_service import ChatService

        return ChatService(
            self.settings,
            self.models,
            self.prompts,
            self.history,
            self.retrieval,
            self.metrics,
            profiles=self.profiles,
            experiments=self.experiments,
            routing=self.routing,
            rate_limits=self.rate_limits,
            audit=self.audit,
            traces=self.traces,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def built(self, name: str) -> bool:
        """Whether a part has been built (or handed in)."""
        return name in self.__dict__

    async def warm(self) -> None:
        """Build everything a server needs now, so the first request pays for no model load."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        load = getattr(self.llm, "load", None)
        if load is not None:
            await asyncio.to_thread(load)
        await asyncio.to_thread(lambda: (self.prompts, self.store, self.embedder, self.retriever))
        await asyncio.to_thread(lambda: (self.history, self.jobs, self.authenticator, self.rate_limits))
        self.chat, self.documents  # noqa: B018 - built now, not on the first request
        # The collection registry too (its first query compiles the statements it keeps).
        try:
            await asyncio.to_thread(self.versions.resolve, self.settings.server.default_collection)
        except Exception as exc:  # a database that is down now is answered per request (503)
            log.warning("collection registry not reachable at start-up: %r", exc)

    async def aclose(self) -> None:
        """Close what this container built (parts handed in belong to the caller). Closed parts and
        the services using them are forgotten, so opening the container again rebuilds them."""
        if self.built("retrieval"):
            self.retrieval.close()
        self._version_retrievers.clear()
        self._version_pipelines.clear()
        if self.built("bm25_feed") and self.bm25_feed is not None:
            self.bm25_feed.stop()
        if self.built("job_queue") and self.job_queue is not None:
            await self.job_queue.aclose()
        if self.built("experiments"):
            await self.experiments.stop()
        if self.built("models"):
            await self.models.aclose()
        for name in ("history", "jobs", "llm"):
            if self.built(name) and name not in self._injected:
                try:
                    await getattr(self, name).aclose()
                except Exception:  # one failing close must not keep the others open
                    log.exception("closing %s failed", name)
        if self.built("database"):
            self.database.dispose()
        for name in self._parts():
            if name not in KEPT_ACROSS_OPENINGS and name not in self._injected:
                self.__dict__.pop(name, None)

    @classmethod
    def _parts(cls) -> list[str]:
        """The names of every part this container can build (its cached properties)."""
        return [name for name, value in vars(cls).items() if isinstance(value, cached_property)]


@asynccontextmanager
async def open_container(
    settings: Settings | Container | None = None, *, llm: LLM | None = None, warm: bool = False
) -> AsyncIterator[Container]:
    """Open the object graph for `settings` (or an already made Container) and close it on exit."""
    container = settings if isinstance(settings, Container) else Container(settings, llm=llm)
    try:
        if warm:
            await container.warm()
        yield container
    finally:
        await container.aclose()


@contextmanager
def open_container_sync(settings: Settings | Container | None = None) -> Iterator[Container]:
    """`open_container` for synchronous callers (the CLI): its own event loop opens and closes it."""
    with asyncio.Runner() as runner:
        manager = open_container(settings)
        container = runner.run(manager.__aenter__())
        try:
            yield container
        finally:
            runner.run(manager.__aexit__(None, None, None))


def _query_threads(settings: Settings) -> int:
    """ONNX Runtime intra-op threads a query gets (`retrieval.query_threads`; None picks per precision:
    1 for int8, whose single query is faster on one thread, 2.7 against 3.5 ms; 2 for fp32, 6.5 against
    8.2 ms)."""
    threads = settings.retrieval.query_threads
    if threads is not None:
        return threads
    return 1 if settings.embedding.query_precision == "int8" else 2
