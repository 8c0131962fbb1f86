"""Retrieval only, for apps that bring their own LLM."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import RetrievalServiceDep

router = APIRouter(tags=["retrieve"])


class RetrieveRequest(BaseModel):
    query: str = Field(min_length=1)
    collection: str | None = None
    top_k: int = Field(10, ge=1, le=200)
    filters: dict[str, Any] | None = None
    mode: Literal["dense", "bm25", "hybrid"] | None = None


class RetrievedChunk(BaseModel):
    rank: int
    chunk_id: str
    document_id: str
    score: float
    text: str
    source: str
    title: str
    page: int | None = None
    metadata: dict[str, Any]


class RetrieveResponse(BaseModel):
    collection: str
    mode: str
    results: list[RetrievedChunk]


@router.post("/v1/retrieve", response_model=RetrieveResponse)
async def retrieve(body: RetrieveRequest, service: RetrievalServiceDep) -> RetrieveResponse:
    """Ranked chunks of a collection for a query."""
    collection = service.resolve_collection(body.collection)
    mode = body.mode or service.settings.retrieval.mode
    hits = await service.retrieve(collection, body.query, top_k=body.top_k, mode=mode, filters=body.filters)
    return RetrieveResponse(
        collection=collection,
        mode=mode,
        results=[
            RetrievedChunk(
                rank=i,
                chunk_id=h.chunk_id,
                document_id=h.doc_id,
                score=h.score,
                text=h.text,
                source=str(h.metadata.get("source", "")),
                title=str(h.metadata.get("title", "")),
                page=h.metadata.get("page"),
                metadata=h.metadata,
            )
            for i, h in enumerate(hits, start=1)
        ],
    )
