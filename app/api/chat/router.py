"""The chat API for internal apps: answers with citations, server-side history, streaming."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.api.auth import Reader
from app.api.chat.schemas import ChatRequest, ConversationOut, TurnOut
from app.api.deps import ChatServiceDep
from app.api.disconnect import unless_disconnected
from app.api.sse import SSEEncoder, SSEMessage, sse_message, sse_response
from app.services.chat_types import ChatEvent, ChatQuery, ChatResult, CitationsEvent, DoneEvent, TokenEvent

router = APIRouter(tags=["chat"])


def to_query(body: ChatRequest) -> ChatQuery:
    """The service's query for a request (defaults stay None: the service resolves them)."""
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


class ChatEvents(SSEEncoder):
    """`/v1/chat` streams: `token` events, then `citations`, then `done` with the full answer."""

    error_event = "error"

    def encode(self, event: ChatEvent) -> list[SSEMessage]:
        """One named event per chat event."""
        match event:
            case TokenEvent(text):
                return [sse_message({"text": text}, "token")]
            case CitationsEvent(citations):
                return [sse_message([c.to_dict() for c in citations], "citations")]
            case DoneEvent(result):
                return [sse_message(result.model_dump(mode="json"), "done")]
        return []


@router.post("/v1/chat", response_model=ChatResult)
async def chat(body: ChatRequest, request: Request, service: ChatServiceDep, principal: Reader):  # type: ignore[no-untyped-def]
    """Answer a message from a collection, with citations. With `"stream": true` the answer comes as
    Server-Sent Events: `token` events, then `citations`, then `done` carrying the full response.
    A client that disconnects cancels the generation; nothing is saved for it."""
    query = to_query(body)
    if body.stream:
        return await sse_response(service.stream(query, principal=principal), ChatEvents(), request)
    return await unless_disconnected(request, service.chat(query, principal=principal))


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut)
async def get_conversation(
    conversation_id: str, service: ChatServiceDep, principal: Reader
) -> ConversationOut:
    """A conversation's turns, oldest first."""
    turns = await service.get_conversation(conversation_id, principal=principal)
    return ConversationOut(
        conversation_id=conversation_id,
        turns=[
            TurnOut(role=t.role, content=t.content, created_at=t.created_at, metadata=t.metadata)
            for t in turns
        ],
    )


@router.delete("/v1/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(conversation_id: str, service: ChatServiceDep, principal: Reader) -> None:
    """Forget a conversation (a reader may forget its tenant's conversations: they are its own)."""
    await service.delete_conversation(conversation_id, principal=principal)
