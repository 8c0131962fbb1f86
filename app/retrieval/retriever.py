"""Retrieval over a collection: dense (Chroma), BM25, or both fused with weighted RRF; optional
metadata filters on both stages; an optional cross-encoder rerank over the top fused candidates;
chunk-level results, or document-level ones where a document ranks by its best chunk."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.retrieval.filters import MetadataFilter, parse_filters
from app.retrieval.fusion import best_chunk_per_document, fuse_chunks, reciprocal_rank_fusion
from ingest.embedder import Embedder
from ingest.types import ScoredChunk
from ingest.vector_store import ChromaIndex

if TYPE_CHECKING:
    from app.retrieval.bm25_index import BM25Index
    from app.retrieval.rerank import Reranker
    from app.settings import RetrievalSettings

MODES = ("dense", "bm25", "hybrid")
# Chunks fetched per wanted document in document-level retrieval (SciFact abstracts: ~2 chunks each).
_CHUNKS_PER_DOCUMENT = 3


class RetrievalError(ValueError):
    """A retrieval request that cannot be served as asked (unknown mode, no reranker configured)."""


@dataclass
class ScoredDocument:
    """A document-level hit: the document's score and its best chunk (and others that were retrieved)."""

    doc_id: str
    score: float
    chunks: list[ScoredChunk]

    @property
    def best_chunk(self) -> ScoredChunk:
        return self.chunks[0]


@dataclass(frozen=True)
class FusionConfig:
    """How candidates are gathered and fused (defaults mirror RetrievalSettings)."""

    rrf_k: float = 60.0
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    candidates: int = 100
    rerank_top_n: int = 50

    @classmethod
    def from_settings(cls, s: RetrievalSettings) -> FusionConfig:
        return cls(s.rrf_k, s.dense_weight, s.bm25_weight, s.candidates, s.rerank_top_n)


class Retriever:
    """Ranks a collection's chunks (or documents) for a query."""

    def __init__(
        self,
        store: ChromaIndex,
        embedder: Embedder,
        *,
        default_mode: str = "dense",
        bm25: BM25Index | None = None,
        fusion: FusionConfig | None = None,
        reranker: Reranker | None = None,
    ):
        self.store = store
        self.embedder = embedder
        self.bm25 = bm25
        self.fusion = fusion or FusionConfig()
        self.reranker = reranker
        self.default_mode = self._mode(default_mode)

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
        `app.retrieval.filters` (FilterError when invalid); `rerank` None means "if configured".
        Scores are cosine similarity (dense), BM25 (bm25), RRF (hybrid) or the reranker's.
        """
        ranking = self._chunks(collection, query, self._mode(mode), parse_filters(filters), max(top_k, 1))
        ranking = self._rerank(query, ranking, rerank)
        return ranking[:top_k]

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
        """The top_k documents for `query`, each ranked by its best chunk.

        In hybrid mode each stage's chunk ranking is first collapsed to documents, then the two
        document rankings are fused, so a document whose best dense chunk and best BM25 chunk differ
        still gets credit from both.
        """
        resolved = self._mode(mode)
        flt = parse_filters(filters)
        wanted = max(self.fusion.candidates, top_k * _CHUNKS_PER_DOCUMENT)
        use_rerank = self._use_rerank(rerank)
        if resolved == "hybrid" and not use_rerank:
            dense, bm25 = self._stage_rankings(collection, query, flt, wanted)
            docs_dense, docs_bm25 = best_chunk_per_document(dense), best_chunk_per_document(bm25)
            fused = reciprocal_rank_fusion(
                [[h.doc_id for h in docs_dense], [h.doc_id for h in docs_bm25]],
                [self.fusion.dense_weight, self.fusion.bm25_weight],
                self.fusion.rrf_k,
            )
            by_doc: dict[str, list[ScoredChunk]] = {}
            for hit in [*dense, *bm25]:
                chunks = by_doc.setdefault(hit.doc_id, [])
                if all(c.chunk_id != hit.chunk_id for c in chunks):
                    chunks.append(hit)
            return [ScoredDocument(doc_id, score, by_doc[doc_id]) for doc_id, score in fused[:top_k]]
        ranking = self._chunks(collection, query, resolved, flt, wanted)
        ranking = self._rerank(query, ranking, rerank)
        return group_by_document(ranking)[:top_k]

    # -- stages --------------------------------------------------------------------------------

    def _chunks(
        self, collection: str, query: str, mode: str, flt: MetadataFilter | None, k: int
    ) -> list[ScoredChunk]:
        n = max(k, self.fusion.candidates)
        if mode == "dense":
            return self._dense(collection, query, flt, n)
        if mode == "bm25":
            return self._bm25(collection, query, flt, n)
        dense, bm25 = self._stage_rankings(collection, query, flt, n)
        return fuse_chunks([dense, bm25], [self.fusion.dense_weight, self.fusion.bm25_weight], self.fusion.rrf_k)

    def _stage_rankings(
        self, collection: str, query: str, flt: MetadataFilter | None, n: int
    ) -> tuple[list[ScoredChunk], list[ScoredChunk]]:
        return self._dense(collection, query, flt, n), self._bm25(collection, query, flt, n)

    def _dense(self, collection: str, query: str, flt: MetadataFilter | None, n: int) -> list[ScoredChunk]:
        vector = self.embedder.embed([query])[0]
        return self.store.query(collection, vector, n, where=flt.where if flt else None)

    def _bm25(self, collection: str, query: str, flt: MetadataFilter | None, n: int) -> list[ScoredChunk]:
        if self.bm25 is None:
            raise RetrievalError("BM25 retrieval is not available (no BM25 index configured)")
        return self.bm25.search(collection, query, n, flt)

    def _use_rerank(self, rerank: bool | None) -> bool:
        if rerank and self.reranker is None:
            raise RetrievalError("rerank requested but no rerank model is configured (retrieval.rerank_model_path)")
        return self.reranker is not None if rerank is None else rerank

    def _rerank(self, query: str, ranking: list[ScoredChunk], rerank: bool | None) -> list[ScoredChunk]:
        if not self._use_rerank(rerank) or not ranking:
            return ranking
        assert self.reranker is not None
        n = self.fusion.rerank_top_n
        # Only the head is rescored; the tail keeps its first-stage order below it.
        return self.reranker.rerank(query, ranking[:n]) + ranking[n:]

    def _mode(self, mode: str | None) -> str:
        resolved = mode or self.default_mode
        if resolved not in MODES:
            raise RetrievalError(f"unknown retrieval mode {resolved!r}; use one of {', '.join(MODES)}")
        return resolved


def group_by_document(ranking: list[ScoredChunk]) -> list[ScoredDocument]:
    """Documents in the order of their best chunk, each with its retrieved chunks best first."""
    by_doc: dict[str, list[ScoredChunk]] = {}
    for hit in ranking:
        by_doc.setdefault(hit.doc_id, []).append(hit)
    return [ScoredDocument(best.doc_id, best.score, by_doc[best.doc_id]) for best in best_chunk_per_document(ranking)]


def build_retriever(
    settings: RetrievalSettings, store: ChromaIndex, embedder: Embedder, bm25: BM25Index | None
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
    )
