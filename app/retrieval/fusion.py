"""Fusing ranked lists, and collapsing chunk rankings into document rankings."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from ingest.types import ScoredChunk

K = TypeVar("K", bound=Hashable)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[K]], weights: Sequence[float] | None = None, k: float = 60.0
) -> list[tuple[K, float]]:
    """Weighted RRF (Cormack et al., 2009): score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.

    Each ranking lists keys best first (a key repeated within one ranking counts at its best rank).
    Returns (key, fused score) best first; ties keep the order of first appearance.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if k <= 0:
        raise ValueError("the RRF constant k must be positive")
    fused: dict[K, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        seen: set[K] = set()
        for rank, key in enumerate(ranking, start=1):
            if key in seen:
                continue
            seen.add(key)
            fused[key] = fused.get(key, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


def fuse_chunks(
    rankings: Sequence[Sequence[ScoredChunk]], weights: Sequence[float] | None = None, k: float = 60.0
) -> list[ScoredChunk]:
    """RRF over chunk rankings; each fused chunk carries its RRF score."""
    by_id: dict[str, ScoredChunk] = {}
    for ranking in rankings:
        for hit in ranking:
            by_id.setdefault(hit.chunk_id, hit)
    fused = reciprocal_rank_fusion([[h.chunk_id for h in r] for r in rankings], weights, k)
    return [_rescored(by_id[cid], score) for cid, score in fused]


def best_chunk_per_document(ranking: Sequence[ScoredChunk]) -> list[ScoredChunk]:
    """A chunk ranking collapsed to documents: each document at the rank of its best chunk."""
    seen: set[str] = set()
    best: list[ScoredChunk] = []
    for hit in ranking:
        if hit.doc_id not in seen:
            seen.add(hit.doc_id)
            best.append(hit)
    return best


def _rescored(hit: ScoredChunk, score: float) -> ScoredChunk:
    return ScoredChunk(chunk_id=hit.chunk_id, doc_id=hit.doc_id, text=hit.text, score=score, metadata=hit.metadata)
