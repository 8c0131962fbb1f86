"""The rerank stage: Retriever plumbing with a hand-written reranker, and a real sentence-transformers
CrossEncoder built by the test itself (a tiny random BERT with the packaged MiniLM tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.retrieval.rerank import CrossEncoderReranker, passage_text
from app.retrieval.retriever import FusionConfig, RetrievalError, Retriever
from ingest.types import Chunk, ScoredChunk


def hit(doc_id: str, idx: int = 0, score: float = 1.0, text: str | None = None) -> ScoredChunk:
    return ScoredChunk(
        chunk_id=f"{doc_id}::v::{idx}",
        doc_id=doc_id,
        text=text or f"text of {doc_id} {idx}",
        score=score,
        metadata={"doc_id": doc_id, "title": doc_id.upper()},
    )


class FakeStore:
    """A VectorIndex stand-in that answers every search with a fixed ranking (ids and scores only)."""

    def __init__(self, ranking: list[ScoredChunk]):
        self.ranking = ranking

    def nearest(self, name: str, embedding: Any, k: int, flt: Any = None) -> list[ScoredChunk]:
        return [ScoredChunk(h.chunk_id, h.doc_id, "", h.score, {}) for h in self.ranking[:k]]

    def get_chunks(self, name: str, chunk_ids: list[str]) -> list[Chunk]:
        by_id = {h.chunk_id: h for h in self.ranking}
        return [Chunk(c, by_id[c].doc_id, by_id[c].text, by_id[c].metadata) for c in chunk_ids if c in by_id]


class FakeEmbedder:
    model_id, dim = "fake", 2

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 2), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class ReverseReranker:
    """Scores hits in reverse of their incoming order, and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def rerank(self, query: str, hits: list[ScoredChunk]) -> list[ScoredChunk]:
        self.seen.append([h.chunk_id for h in hits])
        rescored = [
            ScoredChunk(h.chunk_id, h.doc_id, h.text, float(i), h.metadata) for i, h in enumerate(hits)
        ]
        return sorted(rescored, key=lambda h: -h.score)


RANKING = [hit("a"), hit("b"), hit("a", 1), hit("c"), hit("d")]


def retriever(reranker: Any = None, top_n: int = 3) -> Retriever:
    return Retriever(
        FakeStore(RANKING),  # type: ignore[arg-type]
        FakeEmbedder(),
        default_mode="dense",
        fusion=FusionConfig(candidates=10, rerank_top_n=top_n),
        reranker=reranker,
    )


@pytest.mark.unit
def test_rerank_rescores_only_the_top_n_and_keeps_the_tail_below() -> None:
    reranker = ReverseReranker()
    hits = retriever(reranker, top_n=3).retrieve("c", "q", top_k=5)
    assert reranker.seen == [["a::v::0", "b::v::0", "a::v::1"]]
    assert [h.chunk_id for h in hits] == ["a::v::1", "b::v::0", "a::v::0", "c::v::0", "d::v::0"]


@pytest.mark.unit
def test_rerank_is_used_when_configured_and_can_be_turned_off_per_request() -> None:
    reranker = ReverseReranker()
    r = retriever(reranker)
    assert r.retrieve("c", "q", top_k=1)[0].chunk_id == "a::v::1"
    assert r.retrieve("c", "q", top_k=1, rerank=False)[0].chunk_id == "a::v::0"
    assert len(reranker.seen) == 1


@pytest.mark.unit
def test_documents_rank_by_their_best_reranked_chunk() -> None:
    docs = retriever(ReverseReranker(), top_n=5).retrieve_documents("c", "q", top_k=3, mode="dense")
    assert [d.doc_id for d in docs] == ["d", "c", "a"]
    assert [c.chunk_id for c in docs[2].chunks] == ["a::v::1", "a::v::0"]


@pytest.mark.unit
def test_asking_for_rerank_without_a_model_is_an_error() -> None:
    with pytest.raises(RetrievalError, match="rerank_model_path"):
        retriever(None).retrieve("c", "q", rerank=True)
    assert [h.chunk_id for h in retriever(None).retrieve("c", "q", top_k=2)] == ["a::v::0", "b::v::0"]


@pytest.mark.unit
def test_unknown_mode_and_missing_bm25_are_errors() -> None:
    with pytest.raises(RetrievalError, match="unknown retrieval mode"):
        retriever().retrieve("c", "q", mode="sparse")
    with pytest.raises(RetrievalError, match="BM25"):
        retriever().retrieve("c", "q", mode="hybrid")


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer BERT cross-encoder, saved like a downloaded one (no network)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ingest.embedder import packaged_model_dir

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.integration
def test_cross_encoder_reranker_orders_by_the_models_scores(tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder)
    hits = [
        hit("a", text="cats purr"),
        hit("b", text="dogs bark loudly"),
        hit("c", text="fish swim in schools"),
    ]
    reranked = reranker.rerank("which animals make noise", hits)
    expected = reranker.model.predict([("which animals make noise", passage_text(h)) for h in hits])
    assert [h.doc_id for h in reranked] == [hits[i].doc_id for i in np.argsort(-expected)]
    assert [h.score for h in reranked] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)
    assert passage_text(hits[0]) == "A\ncats purr"  # the title the embedder saw, then the text
    assert reranker.rerank("q", []) == []


@pytest.mark.integration
def test_cross_encoder_plugs_into_the_retriever(tiny_cross_encoder: Path) -> None:
    r = retriever(CrossEncoderReranker(tiny_cross_encoder), top_n=5)
    hits = r.retrieve("c", "q", top_k=5)
    assert sorted(h.chunk_id for h in hits) == sorted(h.chunk_id for h in RANKING)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.integration
def test_a_missing_or_multi_label_model_is_refused(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    with pytest.raises(FileNotFoundError):
        CrossEncoderReranker(tmp_path / "nope")
    config = AutoConfig.from_pretrained(str(tiny_cross_encoder), num_labels=3)
    BertForSequenceClassification(config).save_pretrained(str(tmp_path / "nli"))
    AutoTokenizer.from_pretrained(str(tiny_cross_encoder)).save_pretrained(str(tmp_path / "nli"))
    with pytest.raises(ValueError, match="3 output labels"):
        CrossEncoderReranker(tmp_path / "nli")
