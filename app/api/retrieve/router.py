"""Retrieval only, for apps that bring their own LLM."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import RetrievalServiceDep
from app.api.guards import Reader
from app.services.chat_types import Citation
from app.services.limits import Deadline, check_size

router = APIRouter(tags=["retrieve"])


class RetrieveRequest(BaseModel):
    query: str = Field(min_length=1)
    collection: str | None = None
    top_k: int = Field(10, ge=1, le=200)
    filters: dict[str, Any] | None = None
    mode: Literal["dense", "bm25", "hybrid"] | None = None


class RetrievedChunk(Citation):
    """A ranked chunk: the `Citation` model numbered by rank (`rank` on the wire), with all its metadata."""

    model_config = ConfigDict(populate_by_name=True)

    n: int = Field(alias="rank", description="1 for the best match.")
    metadata: dict[str, Any]


class RetrieveResponse(BaseModel):
    collection: str
    collection_version: str = Field(description='The collection version that answered ("v1", "v2", ...).')
    mode: str
    results: list[RetrievedChunk]


@router.post("/v1/retrieve", response_model=RetrieveResponse)
async def retrieve(
    body: RetrieveRequest, service: RetrievalServiceDep, principal: Reader
) -> RetrieveResponse:
    """Ranked chunks of a collection for a query (at most limits.max_question_chars characters, else
    413; within limits.request_timeout_s, else 504)."""
    limits = service.settings.limits
    check_size(body.query, limits.max_question_chars, "query")
    deadline = Deadline(limits.request_timeout_s)
    collection = body.collection or service.settings.server.default_collection
    store = await deadline.run(service.resolve_collection(collection, principal=principal))
    retrieved = await deadline.run(
        service.retrieve(store, body.query, top_k=body.top_k, mode=body.mode, filters=body.filters)
    )
    return RetrieveResponse(
        collection=collection,
        collection_version=retrieved.version,
        mode=service.resolve_mode(body.mode),
        results=[
            RetrievedChunk.from_hit(i, h, metadata=h.metadata) for i, h in enumerate(retrieved.hits, start=1)
        ],
    )
