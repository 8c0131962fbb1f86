"""Reciprocal rank fusion and chunk -> document collapsing."""

from __future__ import annotations

import pytest

from app.retrieval.fusion import best_chunk_per_document, fuse_chunks, reciprocal_rank_fusion
from app.retrieval.retriever import group_by_document
from ingest.types import ScoredChunk

pytestmark = pytest.mark.unit


def hit(chunk_id: str, doc_id: str | None = None, score: float = 0.0) -> ScoredChunk:
    return ScoredChunk(chunk_id=chunk_id, doc_id=doc_id or chunk_id.split("::")[0], text="", score=score, metadata={})


def test_rrf_scores_follow_the_formula() -> None:
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)


def test_rrf_orders_by_fused_score_and_keeps_items_from_either_list() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=60)
    assert [key for key, _ in fused] == ["a", "c", "b", "d"]


def test_rrf_weights_shift_the_order() -> None:
    rankings = [["dense1", "shared"], ["bm25_1", "shared"]]
    assert reciprocal_rank_fusion(rankings, [1.0, 1.0])[0][0] == "shared"

    def order(weights: list[float]) -> list[str]:
        return [key for key, _ in reciprocal_rank_fusion(rankings, weights)]

    assert order([2.0, 1.0]).index("dense1") < order([2.0, 1.0]).index("bm25_1")
    assert order([1.0, 2.0]).index("bm25_1") < order([1.0, 2.0]).index("dense1")
    # A zero weight turns a ranking off entirely (its items still appear, with score 0).
    only_dense = reciprocal_rank_fusion(rankings, [1.0, 0.0])
    assert [k for k, s in only_dense if s > 0] == ["dense1", "shared"]


def test_rrf_small_k_favours_top_ranks() -> None:
    # x is first in one list only; y is fourth in both.
    rankings = [["x", "a", "b", "y"], ["c", "d", "e", "y"]]
    sharp, flat = dict(reciprocal_rank_fusion(rankings, k=1)), dict(reciprocal_rank_fusion(rankings, k=1000))
    assert sharp["x"] > sharp["y"]
    assert flat["y"] > flat["x"]


def test_rrf_counts_a_repeated_key_once_per_ranking_at_its_best_rank() -> None:
    fused = dict(reciprocal_rank_fusion([["a", "a", "b"]], k=10))
    assert fused["a"] == pytest.approx(1 / 11)
    assert fused["b"] == pytest.approx(1 / 13)


def test_rrf_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0])
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], k=0)
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[], []]) == []


def test_fuse_chunks_carries_the_chunk_and_the_fused_score() -> None:
    dense = [hit("d1::v::0", score=0.9), hit("d2::v::0", score=0.8)]
    bm25 = [hit("d2::v::0", score=12.0), hit("d3::v::1", score=7.0)]
    fused = fuse_chunks([dense, bm25], k=60)
    assert [h.chunk_id for h in fused] == ["d2::v::0", "d1::v::0", "d3::v::1"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0].doc_id == "d2"


def test_documents_rank_by_their_best_chunk() -> None:
    ranking = [hit("a::v::1", "a", 0.9), hit("b::v::0", "b", 0.8), hit("a::v::0", "a", 0.7), hit("c::v::0", "c", 0.1)]
    assert [h.chunk_id for h in best_chunk_per_document(ranking)] == ["a::v::1", "b::v::0", "c::v::0"]
    docs = group_by_document(ranking)
    assert [(d.doc_id, d.score) for d in docs] == [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    assert [c.chunk_id for c in docs[0].chunks] == ["a::v::1", "a::v::0"]
    assert docs[0].best_chunk.chunk_id == "a::v::1"
