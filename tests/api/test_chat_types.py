"""The chat data at the API boundary: defaults resolved in one place, one JSON shape per concept."""

from __future__ import annotations

import pytest

from app.services.chat_types import ChatQuery, ChatResult, Citation
from app.settings import Settings
from ingest.types import ScoredChunk

pytestmark = pytest.mark.unit


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_resolve_fills_every_default_from_settings(settings: Settings) -> None:
    resolved = ChatQuery(message="hi", collection="", prompt="").resolve(settings)
    assert (resolved.collection, resolved.prompt, resolved.mode) == (
        settings.server.default_collection,
        settings.prompts.answer,
        settings.retrieval.mode,
    )
    assert (resolved.top_k, resolved.max_tokens, resolved.temperature) == (
        settings.retrieval.top_k,
        settings.llm.max_tokens,
        settings.llm.temperature,
    )
    assert resolved.resolve(settings) == resolved


def test_resolve_keeps_what_the_caller_set(settings: Settings) -> None:
    query = ChatQuery(
        message="hi", collection="kb", prompt="answer@v2", top_k=2, mode="bm25", max_tokens=9, temperature=0.0
    )
    settings.llm.temperature = 0.7
    resolved = query.resolve(settings)
    assert (resolved.collection, resolved.prompt, resolved.top_k, resolved.mode) == (
        "kb",
        "answer@v2",
        2,
        "bm25",
    )
    assert (resolved.max_tokens, resolved.temperature) == (9, 0.0)  # 0.0 is a value, not "unset"


def test_chat_result_json_is_the_api_answer_without_internal_fields() -> None:
    hit = ScoredChunk(chunk_id="d#0", doc_id="d", text="Etna", score=0.12345678, metadata={"source": "e.txt"})
    citation = Citation.from_hit(1, hit)
    result = ChatResult(
        conversation_id="c",
        response_id="r",
        answer="Etna [1].",
        citations=[citation],
        prompt="answer@v1",
        model="m",
        usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        collection="kb",
        retrieval={"mode": "hybrid"},
        query="where is etna",
        contexts=[citation],
        latency_ms=12.5,
    )
    data = result.model_dump(mode="json")
    assert "query" not in data and "contexts" not in data and "latency_ms" not in data
    assert data["citations"] == [citation.to_dict()]
    assert citation.to_dict() == {
        "n": 1,
        "document_id": "d",
        "source": "e.txt",
        "chunk_id": "d#0",
        "score": 0.123457,
        "text": "Etna",
        "title": "",
        "page": None,
    }
