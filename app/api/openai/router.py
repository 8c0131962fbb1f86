"""An OpenAI-compatible API (`/v1/chat/completions`, `/v1/models`): the `model` is a collection.

Citations travel in an extra top-level `citations` field and, for clients that drop unknown fields,
as [n] markers with a "Sources:" list appended to the text (settings.prompts.openai_inline_citations).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.chat.router import prime
from app.api.deps import ChatServiceDep, StateDep
from app.api.errors import APIError, error_body
from app.services.chat_service import ChatQuery, ChatResult, Citation

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
    lines = [
        f"[{c.n}] {c.title or c.source}" + (f" ({c.source})" if c.title and c.source != c.title else "")
        for c in citations
    ]
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""


def _query(body: ChatCompletionRequest, default_collection: str) -> ChatQuery:
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise APIError(400, "invalid_request", "the last message must be a user message")
    collection = default_collection if body.model in _DEFAULT_MODELS else body.model
    return ChatQuery(
        message=turns[-1].text(),
        collection=collection,
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
    return {
        "citations": [c.to_dict() for c in result.citations],
        "ragserver": {"response_id": result.response_id, "prompt": result.prompt, "model": result.model},
    }


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, service: ChatServiceDep):  # type: ignore[no-untyped-def]
    """OpenAI Chat Completions over a collection (the `model`), streaming or not."""
    inline = service.settings.prompts.openai_inline_citations
    query = _query(body, service.settings.server.default_collection)
    created = int(time.time())
    if not body.stream:
        result = await service.chat(query)
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
    events = await prime(service.stream(query))
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    model = query.collection or service.settings.server.default_collection
    chunk_id = f"chatcmpl-{int(time.time() * 1000)}"

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        payload = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(payload)}\n\n"

    async def sse() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for kind, payload in events:
                if kind == "token":
                    yield chunk({"content": payload})
                elif kind == "done":
                    result: ChatResult = payload
                    if inline and result.citations:
                        yield chunk({"content": sources_text(result.citations)})
                    yield chunk({}, "stop", **_extras(result))
                    if include_usage:
                        usage_payload = {
                            "id": chunk_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": result.usage,
                        }
                        yield f"data: {json.dumps(usage_payload)}\n\n"
        except Exception as exc:
            yield f"data: {json.dumps(error_body('stream_failed', str(exc)))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    """Collections, as OpenAI models."""
    import asyncio

    names = await asyncio.to_thread(state.container.store.list_collections)
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": 0, "owned_by": "ragserver"} for n in names],
    }
