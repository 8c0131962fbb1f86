"""Fusing ranked lists (weighted RRF, or a convex combination of normalised scores), and collapsing
chunk rankings into document rankings."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np

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


def convex_fusion(
    rankings: Sequence[Sequence[tuple[K, float]]], weights: Sequence[float] | None = None
) -> list[tuple[K, float]]:
    """Weighted sum of z-score-normalised scores (the convex combination of Bruch et al., 2023).

    Each ranking is (key, raw score) best first; its scores are standardised over its own list, and a
    key missing from a list gets that list's lowest standardised score (it ranked below everything
    that list returned). A list without spread (one hit, or all tied) can only say which keys it
    found: they get +1 and the keys it missed -1, as if one standard deviation apart (a lone exact
    BM25 match must still count). Unlike RRF this keeps how far apart scores are, not only their order.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    normalised: list[dict[K, float]] = []
    floors: list[float] = []
    for ranking in rankings:
        best: dict[K, float] = {}
        for key, score in ranking:
            best.setdefault(key, float(score))
        values = np.fromiter(best.values(), dtype=np.float64, count=len(best))
        std = float(values.std()) if len(values) else 0.0
        if std > 0:
            z = (values - values.mean()) / std
            normalised.append(dict(zip(best, z.tolist(), strict=True)))
            floors.append(float(z.min()))
        else:
            normalised.append(dict.fromkeys(best, 1.0))
            floors.append(-1.0 if best else 0.0)
    keys = list(dict.fromkeys(key for n in normalised for key in n))
    position = {key: i for i, key in enumerate(keys)}
    # One array operation per list, in the order a per-key sum adds them (the same floats), and a stable
    # sort (ties keep the order of first appearance): a dict and a sum per key cost more on the hot path.
    fused = np.zeros(len(keys))
    for n, w, floor in zip(normalised, weights, floors, strict=True):
        column = np.full(len(keys), floor)
        column[[position[key] for key in n]] = list(n.values())
        fused += w * column
    return [(keys[i], float(fused[i])) for i in np.argsort(-fused, kind="stable")]


def fuse_hits(
    rankings: Sequence[Sequence[ScoredChunk]],
    *,
    method: str = "rrf",
    weights: Sequence[float] | None = None,
    k: float = 60.0,
    by: Callable[[ScoredChunk], str] = lambda h: h.chunk_id,
    limit: int | None = None,
) -> list[ScoredChunk]:
    """Fuse hit rankings (`method` rrf | convex), keyed by chunk id (or by `by`, e.g. document id); the
    best `limit` of them (all when None).

    Each fused hit is the first one seen for its key, carrying the fused score.
    """
    first: dict[str, ScoredChunk] = {}
    for ranking in rankings:
        for hit in ranking:
            first.setdefault(by(hit), hit)
    if method == "rrf":
        fused = reciprocal_rank_fusion([[by(h) for h in r] for r in rankings], weights, k)
    elif method == "convex":
        fused = convex_fusion([[(by(h), h.score) for h in r] for r in rankings], weights)
    else:
        raise ValueError(f"unknown fusion method {method!r}; use rrf or convex")
    return [_rescored(first[key], score) for key, score in fused[:limit]]


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
    return ScoredChunk(
        chunk_id=hit.chunk_id, doc_id=hit.doc_id, text=hit.text, score=score, metadata=hit.metadata
    )
