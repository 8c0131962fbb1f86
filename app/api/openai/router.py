"""An OpenAI-compatible API (`/v1/chat/completions`, `/v1/models`): the `model` is a collection.

Citations travel in an extra top-level `citations` field and, for clients that drop unknown fields,
as [n] markers with a "Sources:" list appended to the text (settings.prompts.openai_inline_citations).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import Reader
from app.api.deps import ChatServiceDep, RetrievalServiceDep
from app.api.disconnect import unless_disconnected
from app.api.errors import APIError
from app.api.sse import SSEEncoder, SSEMessage, sse_message, sse_response
from app.services.chat_types import ChatEvent, ChatQuery, ChatResult, Citation, DoneEvent, TokenEvent

router = APIRouter(tags=["openai"])

# Model names that mean "the default collection".
_DEFAULT_MODELS = {"ragserver", "default", ""}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = "ragserver"
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stream_options: dict[str, Any] | None = None
    # ragserver extensions, accepted through the client's extra_body
    filters: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=1, le=50)
    prompt: str | None = None
    mode: Literal["dense", "bm25", "hybrid"] | None = None


def sources_text(citations: list[Citation]) -> str:
    """The "Sources:" list appended to the answer text for clients that drop unknown fields."""
    lines = [
        f"[{c.n}] {c.title or c.source}" + (f" ({c.source})" if c.title and c.source != c.title else "")
        for c in citations
    ]
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""


def _query(body: ChatCompletionRequest) -> ChatQuery:
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise APIError(400, "invalid_request", "the last message must be a user message")
    return ChatQuery(
        message=turns[-1].text(),
        # None: the service's default collection.
        collection=None if body.model in _DEFAULT_MODELS else body.model,
        history=[{"role": m.role, "content": m.text()} for m in turns[:-1]],
        remember=False,
        filters=body.filters,
        top_k=body.top_k,
        prompt=body.prompt,
        mode=body.mode,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
    )


def _extras(result: ChatResult) -> dict[str, Any]:
    """ragserver's additions to an OpenAI answer: its citations and what produced it."""
    return {
        "citations": [c.to_dict() for c in result.citations],
        "ragserver": {"response_id": result.response_id, "prompt": result.prompt, "model": result.model},
    }


@dataclass
class CompletionChunks(SSEEncoder):
    """OpenAI `chat.completion.chunk` messages: a role chunk, content chunks, a "stop" chunk carrying the
    citations, a usage chunk when asked for, and `[DONE]`."""

    id: str
    created: int
    model: str
    inline_citations: bool
    include_usage: bool

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> SSEMessage:
        return sse_message(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def _delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> SSEMessage:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish}], **extra)

    def opening(self) -> list[SSEMessage]:
        """The assistant role, before any content."""
        return [self._delta({"role": "assistant", "content": ""})]

    def encode(self, event: ChatEvent) -> list[SSEMessage]:
        """Tokens as content deltas; the end as the sources text, the stop chunk and usage."""
        match event:
            case TokenEvent(text):
                return [self._delta({"content": text})]
            case DoneEvent(result):
                out = []
                if self.inline_citations and result.citations:
                    out.append(self._delta({"content": sources_text(result.citations)}))
                out.append(self._delta({}, "stop", **_extras(result)))
                if self.include_usage:
                    out.append(self._chunk([], usage=result.usage))
                return out
        return []  # the citations travel in the stop chunk

    def closing(self) -> list[SSEMessage]:
        """OpenAI's end-of-stream marker."""
        return [sse_message("[DONE]")]


@router.post("/v1/chat/completions")
async def chat_completions(  # type: ignore[no-untyped-def]
    body: ChatCompletionRequest, request: Request, service: ChatServiceDep, principal: Reader
):
    """OpenAI Chat Completions over a collection (the `model`), streaming or not. The limits of `/v1/chat`
    apply: max_tokens / max_completion_tokens (422 over the cap), the last user message's size (413),
    the deadline, the generation slots; a client that disconnects cancels the generation."""
    inline = service.settings.prompts.openai_inline_citations
    created = int(time.time())
    if not body.stream:
        result = await unless_disconnected(request, service.chat(_query(body), principal=principal))
        content = result.answer + (sources_text(result.citations) if inline else "")
        return {
            "id": f"chatcmpl-{result.response_id}",
            "object": "chat.completion",
            "created": created,
            "model": result.collection,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": result.usage,
            **_extras(result),
        }
    query = _query(body)
    chunks = CompletionChunks(
        id=f"chatcmpl-{int(time.time() * 1000)}",
        created=created,
        # Resolved here because every chunk names the collection, before the answer (which has it) is
        # done; the service gets the query as the client sent it (its limits apply to what was asked).
        model=query.resolve(service.settings).collection,
        inline_citations=inline,
        include_usage=bool((body.stream_options or {}).get("include_usage")),
    )
    return await sse_response(service.stream(query, principal=principal), chunks, request)


@router.get("/v1/models")
async def list_models(retrieval: RetrievalServiceDep, principal: Reader) -> dict[str, Any]:
    """The caller's collections (those its key may touch), as OpenAI models."""
    names = await retrieval.visible_collections(principal)
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": 0, "owned_by": principal.tenant} for n in names],
    }
