"""Retrieval over a collection: dense (the vector index), BM25, or both fused (a convex combination of
z-scored scores, or weighted RRF); metadata filters on both stages, evaluated once by the vector index;
an optional cross-encoder rerank over the top fused candidates; chunk-level results, or document-level
ones where a document ranks by its best chunk.

Both stages rank ids and scores only; the text and metadata of the hits that are kept come from the
vector index at the end (`hydrate`), so there is one source of truth for chunks."""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.retrieval.fusion import best_chunk_per_document, fuse_hits
from ingest.embedder import Embedder, MicroBatchingEmbedder
from ingest.errors import DomainError
from ingest.filters import MetadataFilter, parse_filters
from ingest.types import Chunk, ScoredChunk
from ingest.vector_index import VectorIndex

if TYPE_CHECKING:
    from app.retrieval.bm25_index import BM25Index
    from app.retrieval.rerank import Reranker
    from app.settings import RetrievalSettings

MODES = ("dense", "bm25", "hybrid")
FUSION_METHODS = ("rrf", "convex")
# Chunks fetched per wanted document in document-level retrieval (SciFact abstracts: ~2 chunks each).
_CHUNKS_PER_DOCUMENT = 3


class RetrievalError(DomainError, ValueError):
    """A retrieval request that cannot be served as asked (unknown mode, no reranker configured)."""

    kind, code = "invalid", "invalid_retrieval"


@dataclass
class ScoredDocument:
    """A document-level hit: the document's score and its best chunk (and others that were retrieved),
    as ids and scores (`Retriever.hydrate` fetches their text)."""

    doc_id: str
    score: float
    chunks: list[ScoredChunk]

    @property
    def best_chunk(self) -> ScoredChunk:
        return self.chunks[0]


@dataclass(frozen=True)
class FusionConfig:
    """How candidates are gathered and fused (defaults mirror RetrievalSettings)."""

    method: str = "convex"
    rrf_k: float = 60.0
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    candidates: int = 100
    rerank_top_n: int = 50

    @classmethod
    def from_settings(cls, s: RetrievalSettings) -> FusionConfig:
        return cls(s.fusion, s.rrf_k, s.dense_weight, s.bm25_weight, s.candidates, s.rerank_top_n)

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise RetrievalError(
                f"unknown fusion method {self.method!r}; use one of {', '.join(FUSION_METHODS)}"
            )


class Retriever:
    """Ranks a collection's chunks (or documents) for a query."""

    def __init__(
        self,
        store: VectorIndex,
        embedder: Embedder,
        *,
        default_mode: str = "dense",
        bm25: BM25Index | None = None,
        fusion: FusionConfig | None = None,
        reranker: Reranker | None = None,
        query_threads: int = 1,
    ):
        self.store = store
        self.embedder = embedder
        self.bm25 = bm25
        self.fusion = fusion or FusionConfig()
        self.reranker = reranker
        self.default_mode = self._mode(default_mode)
        # Queries are embedded on their own thread with few intra-op threads: one short input gains
        # little from parallelism, and on a busy CPU extra threads oversubscribe it (10x slower here).
        # Concurrent requests' queries are encoded together in one batch on that thread.
        self._payloads = PayloadCache(store)
        self._query_batcher = (
            MicroBatchingEmbedder(
                embedder, thread_init=functools.partial(_limit_torch_threads, query_threads)
            )
            if query_threads > 0
            else None
        )

    def with_fusion(self, **changes: Any) -> Retriever:
        """A retriever sharing this one's backends with other fusion settings (evals compare them)."""
        other = copy.copy(self)
        other.fusion = dataclasses.replace(self.fusion, **changes)
        return other

    def retrieve(
        self,
        collection: str,
        query: str,
        *,
        top_k: int = 5,
        mode: str | None = None,
        filters: Mapping[str, Any] | MetadataFilter | None = None,
        rerank: bool | None = None,
    ) -> list[ScoredChunk]:
        """The top_k chunks of `collection` for `query`, best first.

        `mode` is dense | bm25 | hybrid (default from settings); `filters` uses the language of
        `ingest.filters` (FilterError when invalid); `rerank` None means "if configured".
        Scores are cosine similarity (dense), BM25 (bm25), the fused score (hybrid) or the reranker's.
        """
        resolved, flt = self._mode(mode), parse_filters(filters)
        # Hits are made only for what is returned or reranked (a fused ranking holds ~200 candidates).
        reranking = rerank if rerank is not None else self.reranker is not None
        keep = max(top_k, 1, self.fusion.rerank_top_n if reranking else 0)
        ranking = self._chunks(collection, query, resolved, flt, max(top_k, 1), keep)
        ranking = self._rerank(collection, query, ranking, rerank)
        return self.hydrate(collection, ranking[:top_k])

    def retrieve_documents(
        self,
        collection: str,
        query: str,
        *,
        top_k: int = 10,
        mode: str | None = None,
        filters: Mapping[str, Any] | MetadataFilter | None = None,
        rerank: bool | None = None,
    ) -> list[ScoredDocument]:
        """The top_k documents for `query`, each ranked by its best chunk: a ranking (ids and scores),
        without text unless reranked; `hydrate` fetches the chunks' payload when a caller needs it.

        In hybrid mode each stage's chunk ranking is first collapsed to documents, then the two
        document rankings are fused, so a document whose best dense chunk and best BM25 chunk differ
        still gets credit from both.
        """
        resolved = self._mode(mode)
        flt = parse_filters(filters)
        wanted = max(self.fusion.candidates, top_k * _CHUNKS_PER_DOCUMENT)
        if resolved == "hybrid" and not self._use_rerank(rerank):
            dense, bm25 = self._stage_rankings(collection, query, flt, wanted)
            fused = self._fuse(
                [best_chunk_per_document(dense), best_chunk_per_document(bm25)], by_document=True
            )
            by_doc: dict[str, dict[str, ScoredChunk]] = {}
            for hit in [*dense, *bm25]:
                by_doc.setdefault(hit.doc_id, {}).setdefault(hit.chunk_id, hit)
            return [
                ScoredDocument(
                    best.doc_id,
                    best.score,
                    [best, *(c for c in by_doc[best.doc_id].values() if c.chunk_id != best.chunk_id)],
                )
                for best in fused[:top_k]
            ]
        ranking = self._chunks(collection, query, resolved, flt, wanted)
        ranking = self._rerank(collection, query, ranking, rerank)
        return group_by_document(ranking)[:top_k]

    def hydrate(self, collection: str, hits: list[ScoredChunk]) -> list[ScoredChunk]:
        """The hits with their text and metadata from the vector index (hits gone since are dropped)."""
        found = self._payloads.get(collection, [h.chunk_id for h in hits if not h.metadata])
        out = []
        for hit in hits:
            chunk = found.get(hit.chunk_id)
            if hit.metadata:
                out.append(hit)
            elif chunk is not None:
                out.append(ScoredChunk(hit.chunk_id, hit.doc_id, chunk.text, hit.score, chunk.metadata))
        return out

    # -- stages --------------------------------------------------------------------------------

    def _chunks(
        self,
        collection: str,
        query: str,
        mode: str,
        flt: MetadataFilter | None,
        k: int,
        keep: int | None = None,
    ) -> list[ScoredChunk]:
        """The chunk ranking of `mode` from `max(k, candidates)` per stage; a fused one cut to `keep`."""
        n = max(k, self.fusion.candidates)
        if mode == "dense":
            return self._dense(collection, query, flt, n)
        if mode == "bm25":
            return self._bm25(collection, query, flt, n)
        return self._fuse(list(self._stage_rankings(collection, query, flt, n)), limit=keep)

    def _fuse(
        self, rankings: list[list[ScoredChunk]], by_document: bool = False, limit: int | None = None
    ) -> list[ScoredChunk]:
        f = self.fusion
        return fuse_hits(
            rankings,
            method=f.method,
            weights=[f.dense_weight, f.bm25_weight],
            k=f.rrf_k,
            by=(lambda h: h.doc_id) if by_document else (lambda h: h.chunk_id),
            limit=limit,
        )

    def _stage_rankings(
        self, collection: str, query: str, flt: MetadataFilter | None, n: int
    ) -> tuple[list[ScoredChunk], list[ScoredChunk]]:
        vector = self._embed_query(query)  # BM25 runs while the query is being embedded
        bm25 = self._bm25(collection, query, flt, n)
        return self._dense_ranking(collection, vector.result()[0], flt, n), bm25

    def _dense(self, collection: str, query: str, flt: MetadataFilter | None, n: int) -> list[ScoredChunk]:
        return self._dense_ranking(collection, self._embed_query(query).result()[0], flt, n)

    def _embed_query(self, query: str) -> Future[np.ndarray]:
        """The query's embedding, as a one-row array, computed in the background when possible."""
        from app.telemetry import tracer

        model = getattr(self.embedder, "model_name", type(self.embedder).__name__)
        span = tracer().start_span(
            "embeddings",
            attributes={"gen_ai.operation.name": "embeddings", "gen_ai.request.model": str(model)},
        )
        if self._query_batcher is None:
            done: Future[np.ndarray] = Future()
            try:
                done.set_result(self.embedder.embed([query]))
            finally:
                span.end()
            return done
        pending = self._query_batcher.submit([query])
        pending.add_done_callback(lambda _: span.end())
        return pending

    def _dense_ranking(
        self, collection: str, vector: np.ndarray, flt: MetadataFilter | None, n: int
    ) -> list[ScoredChunk]:
        return self.store.nearest(collection, vector, n, flt)

    def _bm25(self, collection: str, query: str, flt: MetadataFilter | None, n: int) -> list[ScoredChunk]:
        if self.bm25 is None:
            raise RetrievalError("BM25 retrieval is not available (no BM25 index configured)")
        # The vector index is the one evaluator of filters: BM25 ranks only the ids it allows.
        allowed = self.store.matching_ids(collection, flt) if flt else None
        return self.bm25.search(collection, query, n, allowed)

    def _use_rerank(self, rerank: bool | None) -> bool:
        if rerank and self.reranker is None:
            raise RetrievalError(
                "rerank requested but no rerank model is configured (retrieval.rerank_model_path)"
            )
        return self.reranker is not None if rerank is None else rerank

    def _rerank(
        self, collection: str, query: str, ranking: list[ScoredChunk], rerank: bool | None
    ) -> list[ScoredChunk]:
        if not self._use_rerank(rerank) or not ranking:
            return ranking
        assert self.reranker is not None
        n = self.fusion.rerank_top_n
        # Only the head is rescored (it needs the text); the tail keeps its first-stage order below it.
        return self.reranker.rerank(query, self.hydrate(collection, ranking[:n])) + ranking[n:]

    def _mode(self, mode: str | None) -> str:
        resolved = mode or self.default_mode
        if resolved not in MODES:
            raise RetrievalError(f"unknown retrieval mode {resolved!r}; use one of {', '.join(MODES)}")
        return resolved


class PayloadCache:
    """Recently fetched chunks, by id. A chunk id names one version of one chunk (its content and
    metadata never change under that id), so a cached payload is never stale: it is a cache of the
    vector index, not a second source of truth. Saves the ~1 ms fetch for chunks that keep coming back."""

    def __init__(self, store: VectorIndex, size: int = 4096):
        self.store = store
        self.size = size
        self._items: OrderedDict[tuple[str, str], Chunk] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, collection: str, chunk_ids: list[str]) -> dict[str, Chunk]:
        """The chunks of those ids that exist, fetching the ones not cached."""
        found: dict[str, Chunk] = {}
        with self._lock:
            for cid in chunk_ids:
                chunk = self._items.get((collection, cid))
                if chunk is not None:
                    self._items.move_to_end((collection, cid))
                    found[cid] = chunk
        missing = [cid for cid in chunk_ids if cid not in found]
        if missing:
            fetched = self.store.get_chunks(collection, missing)
            with self._lock:
                for chunk in fetched:
                    found[chunk.chunk_id] = chunk
                    self._items[(collection, chunk.chunk_id)] = chunk
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return found


def _limit_torch_threads(threads: int) -> None:
    # torch's intra-op thread count is per calling thread: this leaves ingestion's threads alone.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def group_by_document(ranking: list[ScoredChunk]) -> list[ScoredDocument]:
    """Documents in the order of their best chunk, each with its retrieved chunks best first."""
    by_doc: dict[str, list[ScoredChunk]] = {}
    for hit in ranking:
        by_doc.setdefault(hit.doc_id, []).append(hit)
    return [
        ScoredDocument(best.doc_id, best.score, by_doc[best.doc_id])
        for best in best_chunk_per_document(ranking)
    ]


def build_retriever(
    settings: RetrievalSettings, store: VectorIndex, embedder: Embedder, bm25: BM25Index | None
) -> Retriever:
    """The Retriever the settings describe (the reranker only when a model path is configured)."""
    reranker = None
    if settings.rerank_model_path:
        from app.retrieval.rerank import CrossEncoderReranker

        reranker = CrossEncoderReranker(settings.rerank_model_path)
    return Retriever(
        store,
        embedder,
        default_mode=settings.mode,
        bm25=bm25,
        fusion=FusionConfig.from_settings(settings),
        reranker=reranker,
        # torch's own threads on the query thread (an ONNX encoder has its own pool; see settings).
        query_threads=1 if settings.query_threads is None else settings.query_threads,
    )
