"""The chat API for internal apps: answers with citations, server-side history, streaming."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from app.api.chat.schemas import ChatRequest, ConversationOut, TurnOut
from app.api.deps import ChatServiceDep
from app.api.disconnect import unless_disconnected
from app.api.guards import Reader
from app.api.sse import SSEEncoder, SSEMessage, answer_headers, sse_message, sse_response
from app.services.chat_service import new_response_id
from app.services.chat_types import (
    ChatEvent,
    ChatQuery,
    ChatResult,
    CitationsEvent,
    DoneEvent,
    StartEvent,
    TokenEvent,
)

router = APIRouter(tags=["chat"])


def to_query(body: ChatRequest) -> ChatQuery:
    """The service's query for a request (defaults stay None: the service resolves them)."""
    return ChatQuery(
        message=body.message,
        conversation_id=body.conversation_id,
        collection=body.collection,
        prompt=body.prompt,
        model=body.model,
        filters=body.filters,
        top_k=body.top_k,
        mode=body.mode,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )


class ChatEvents(SSEEncoder):
    """`/v1/chat` streams: `start` (the response and conversation ids, before any token), `token`
    events, then `citations`, then `done` with the full answer."""

    error_event = "error"

    def encode(self, event: ChatEvent) -> list[SSEMessage]:
        """One named event per chat event."""
        match event:
            case StartEvent(response_id, conversation_id, experiment, arm):
                ids: dict[str, str | None] = {"response_id": response_id, "conversation_id": conversation_id}
                if experiment:
                    ids |= {"experiment": experiment, "arm": arm}
                return [sse_message(ids, "start")]
            case TokenEvent(text):
                return [sse_message({"text": text}, "token")]
            case CitationsEvent(citations):
                return [sse_message([c.to_dict() for c in citations], "citations")]
            case DoneEvent(result):
                return [sse_message(result.model_dump(mode="json"), "done")]
        return []


@router.post("/v1/chat", response_model=ChatResult)
async def chat(  # type: ignore[no-untyped-def]
    body: ChatRequest, request: Request, response: Response, service: ChatServiceDep, principal: Reader
):
    """Answer a message from a collection, with citations. With `"stream": true` the answer comes as
    Server-Sent Events: `start` (`response_id`, `conversation_id`), `token` events, then `citations`,
    then `done` carrying the full response. Every answer carries its id in `X-Response-ID` (feedback:
    `POST /v1/responses/{id}/feedback`). A client that disconnects cancels the generation; nothing is
    saved for it."""
    query = to_query(body)
    rid = new_response_id()
    if body.stream:
        events = service.stream(query, principal=principal, response_id=rid, api="chat")
        return await sse_response(events, ChatEvents(), request, response_id=rid)
    result = await unless_disconnected(request, service.chat(query, principal=principal, response_id=rid))
    response.headers.update(answer_headers(rid, result.experiment, result.arm))
    return result


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
