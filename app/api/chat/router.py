"""The chat API for internal apps: answers with citations, server-side history, streaming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, status
from sse_starlette.sse import EventSourceResponse

from app.api.chat.schemas import ChatRequest, ChatResponse, ConversationOut, TurnOut
from app.api.deps import ChatServiceDep
from app.api.errors import error_body
from app.services.chat_service import ChatQuery, ChatResult

router = APIRouter(tags=["chat"])


def to_query(body: ChatRequest) -> ChatQuery:
    return ChatQuery(
        message=body.message,
        conversation_id=body.conversation_id,
        collection=body.collection,
        prompt=body.prompt,
        filters=body.filters,
        top_k=body.top_k,
        mode=body.mode,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )


async def prime(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
    """Run a stream up to its first event, so errors before any output (unknown collection, bad
    prompt) still become a proper JSON error response instead of a broken event stream."""
    first = await anext(events)

    async def rest() -> AsyncIterator[tuple[str, Any]]:
        yield first
        async for item in events:
            yield item

    return rest()


async def _sse(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[dict[str, str]]:
    try:
        async for kind, payload in events:
            if kind == "token":
                yield {"event": "token", "data": json.dumps({"text": payload})}
            elif kind == "citations":
                yield {"event": "citations", "data": json.dumps(payload)}
            elif kind == "done":
                yield {"event": "done", "data": json.dumps(payload.to_dict())}
    except Exception as exc:  # mid-stream failure: tell the client in-band
        yield {"event": "error", "data": json.dumps(error_body("stream_failed", str(exc)))}


@router.post("/v1/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, service: ChatServiceDep):  # type: ignore[no-untyped-def]
    """Answer a message from a collection, with citations. With `"stream": true` the answer comes as
    Server-Sent Events: `token` events, then `citations`, then `done` carrying the full response."""
    query = to_query(body)
    if body.stream:
        return EventSourceResponse(_sse(await prime(service.stream(query))), ping=15)
    result: ChatResult = await service.chat(query)
    return result.to_dict()


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut)
async def get_conversation(conversation_id: str, service: ChatServiceDep) -> ConversationOut:
    """A conversation's turns, oldest first."""
    turns = await service.get_conversation(conversation_id)
    return ConversationOut(
        conversation_id=conversation_id,
        turns=[
            TurnOut(role=t.role, content=t.content, created_at=t.created_at, metadata=t.metadata)
            for t in turns
        ],
    )


@router.delete("/v1/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(conversation_id: str, service: ChatServiceDep) -> None:
    """Forget a conversation."""
    await service.delete_conversation(conversation_id)
