"""Reciprocal rank fusion and chunk -> document collapsing."""

from __future__ import annotations

import pytest

from app.retrieval.fusion import best_chunk_per_document, convex_fusion, fuse_hits, reciprocal_rank_fusion
from app.retrieval.retriever import group_by_document
from ingest.types import ScoredChunk

pytestmark = pytest.mark.unit


def hit(chunk_id: str, doc_id: str | None = None, score: float = 0.0) -> ScoredChunk:
    return ScoredChunk(
        chunk_id=chunk_id, doc_id=doc_id or chunk_id.split("::")[0], text="", score=score, metadata={}
    )


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


def test_fuse_hits_carries_the_chunk_and_the_fused_score() -> None:
    dense = [hit("d1::v::0", score=0.9), hit("d2::v::0", score=0.8)]
    bm25 = [hit("d2::v::0", score=12.0), hit("d3::v::1", score=7.0)]
    fused = fuse_hits([dense, bm25], k=60)
    assert [h.chunk_id for h in fused] == ["d2::v::0", "d1::v::0", "d3::v::1"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0].doc_id == "d2"


def test_documents_rank_by_their_best_chunk() -> None:
    ranking = [
        hit("a::v::1", "a", 0.9),
        hit("b::v::0", "b", 0.8),
        hit("a::v::0", "a", 0.7),
        hit("c::v::0", "c", 0.1),
    ]
    assert [h.chunk_id for h in best_chunk_per_document(ranking)] == ["a::v::1", "b::v::0", "c::v::0"]
    docs = group_by_document(ranking)
    assert [(d.doc_id, d.score) for d in docs] == [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    assert [c.chunk_id for c in docs[0].chunks] == ["a::v::1", "a::v::0"]
    assert docs[0].best_chunk.chunk_id == "a::v::1"


def test_convex_fusion_sums_z_scores_and_floors_missing_keys() -> None:
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]  # z: 1.2247, 0, -1.2247
    bm25 = [("b", 30.0), ("d", 10.0)]  # z: 1, -1
    fused = dict(convex_fusion([dense, bm25]))
    assert fused["b"] == pytest.approx(0.0 + 1.0)
    assert fused["a"] == pytest.approx(1.2247449 + -1.0)  # missing from bm25: its lowest z
    assert fused["d"] == pytest.approx(-1.2247449 + -1.0)  # missing from dense: its lowest z
    assert [k for k, _ in convex_fusion([dense, bm25])] == ["b", "a", "c", "d"]


def test_convex_fusion_keeps_score_gaps_that_rrf_drops() -> None:
    # Dense barely prefers x; BM25 strongly prefers y. Same ranks, so RRF ties; convex follows the gap.
    dense = [("x", 0.81), ("y", 0.80), ("z", 0.10)]
    bm25 = [("y", 40.0), ("x", 5.0), ("z", 4.0)]
    rrf = dict(reciprocal_rank_fusion([[k for k, _ in dense], [k for k, _ in bm25]]))
    assert rrf["x"] == pytest.approx(rrf["y"])
    assert convex_fusion([dense, bm25])[0][0] == "y"


def test_convex_fusion_weights_and_degenerate_lists() -> None:
    dense = [("x", 0.9), ("y", 0.1)]
    bm25 = [("y", 9.0), ("x", 1.0)]
    assert convex_fusion([dense, bm25], [2.0, 1.0])[0][0] == "x"
    assert convex_fusion([dense, bm25], [1.0, 2.0])[0][0] == "y"
    # An empty list adds nothing.
    assert [k for k, _ in convex_fusion([dense, []])] == ["x", "y"]
    assert dict(convex_fusion([dense, []])) == pytest.approx({"x": 1.0, "y": -1.0})


def test_convex_fusion_a_list_without_spread_still_separates_found_from_missed() -> None:
    dense = [("a", 0.9), ("b", 0.6), ("c", 0.3)]  # z: 1.2247, 0, -1.2247
    lone_exact_match = [("b", 17.0)]
    fused = dict(convex_fusion([dense, lone_exact_match]))
    assert fused == pytest.approx({"a": 1.2247449 - 1.0, "b": 0.0 + 1.0, "c": -1.2247449 - 1.0})
    assert convex_fusion([dense, lone_exact_match])[0][0] == "b"
    tied = dict(convex_fusion([[("p", 2.0), ("q", 2.0)], [("r", 1.0), ("p", 0.0)]]))
    assert tied["p"] == pytest.approx(1.0 + -1.0) and tied["r"] == pytest.approx(-1.0 + 1.0)
    with pytest.raises(ValueError):
        convex_fusion([dense], [1.0, 1.0])


def test_fuse_hits_by_document_and_unknown_method() -> None:
    dense = [hit("a::v::0", score=0.9), hit("b::v::1", score=0.2)]
    bm25 = [hit("b::v::0", score=20.0), hit("a::v::1", score=2.0)]
    fused = fuse_hits([dense, bm25], method="convex", weights=[2.0, 1.0], by=lambda h: h.doc_id)
    # One hit per document (the first seen for it), carrying the fused score.
    assert [(h.doc_id, h.chunk_id) for h in fused] == [("a", "a::v::0"), ("b", "b::v::1")]
    assert [h.score for h in fused] == pytest.approx([1.0, -1.0])
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse_hits([dense], method="borda")


@pytest.mark.parametrize("method", ["rrf", "convex"])
def test_fuse_hits_limit_keeps_the_head_of_the_full_ranking(method: str) -> None:
    dense = [hit(f"d{i}::v::0", score=1.0 - i / 10) for i in range(8)]
    bm25 = [hit(f"d{i}::v::0", score=float(i % 3)) for i in range(4, 12)]
    full = fuse_hits([dense, bm25], method=method)
    assert fuse_hits([dense, bm25], method=method, limit=3) == full[:3]
    assert fuse_hits([dense, bm25], method=method, limit=100) == full


def test_convex_fusion_ties_keep_the_order_of_first_appearance() -> None:
    # Every key scores the same: the fused order is the order keys were first seen (dense, then bm25).
    tied = convex_fusion([[("p", 1.0), ("q", 1.0)], [("r", 3.0), ("s", 3.0)]])
    assert [key for key, _ in tied] == ["p", "q", "r", "s"]
