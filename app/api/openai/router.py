"""An OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`, `/v1/models`): the `model` is a
collection.

Citations travel three ways, so every client keeps at least one: a top-level `citations` field (the
`openai` SDK's `model_extra`), OpenAI's own `message.annotations` of type `url_citation` pointing at the
document in ragserver (on the message, and on the final chunk's delta when streaming), and, for clients
that keep only the text, [n] markers with a "Sources:" list appended to it
(settings.prompts.openai_inline_citations).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ChatServiceDep, RetrievalServiceDep
from app.api.disconnect import unless_disconnected
from app.api.errors import APIError
from app.api.guards import Reader
from app.api.sse import SSEEncoder, SSEMessage, answer_headers, sse_message, sse_response
from app.services.chat_service import new_response_id
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


def url_annotations(result: ChatResult, content: str, base_url: str) -> list[dict[str, Any]]:
    """OpenAI `url_citation` annotations: each cited document's URL in ragserver, spanning its first
    [n] marker in `content` (the answer, else the "Sources:" list; 0-0 when neither has it)."""
    out = []
    for c in result.citations:
        marker = f"[{c.n}]"
        start = content.find(marker)
        span = (start, start + len(marker)) if start >= 0 else (0, 0)
        url = (
            f"{base_url.rstrip('/')}/v1/collections/{quote(result.collection, safe='')}"
            f"/documents/{quote(c.document_id, safe='')}"
        )
        out.append(
            {
                "type": "url_citation",
                "url_citation": {
                    "url": url,
                    "title": c.title or c.source,
                    "start_index": span[0],
                    "end_index": span[1],
                },
            }
        )
    return out


# For clients that keep only the message text but expose response headers (LangChain's ChatOpenAI with
# include_response_headers=True puts them in response_metadata["headers"]).
CITATIONS_HEADER = "X-RAGServer-Citations"
MAX_CITATIONS_HEADER = 4096


def citations_header(citations: list[Citation]) -> str:
    """The citations as compact ASCII JSON, [{n, document_id, title, source, page}], cut to whole entries
    under MAX_CITATIONS_HEADER characters."""
    entries: list[dict[str, Any]] = []
    for c in citations:
        entry = {"n": c.n, "document_id": c.document_id, "title": c.title, "source": c.source, "page": c.page}
        if len(json.dumps([*entries, entry], separators=(",", ":"))) > MAX_CITATIONS_HEADER:
            break
        entries.append(entry)
    return json.dumps(entries, separators=(",", ":"))  # ensure_ascii: header-safe


def _extras(result: ChatResult) -> dict[str, Any]:
    """ragserver's additions to an OpenAI answer: its citations and what produced it."""
    return {
        "citations": [c.to_dict() for c in result.citations],
        "ragserver": {
            "response_id": result.response_id,
            "prompt": result.prompt,
            "model": result.model,
            "abstained": result.abstained,
            "experiment": result.experiment,
            "arm": result.arm,
            "answered_by": result.answered_by,
            "route": result.route,
        },
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
    base_url: str
    _sent: list[str] = field(default_factory=list)

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
                self._sent.append(text)
                return [self._delta({"content": text})]
            case DoneEvent(result):
                out = []
                if self.inline_citations and result.citations:
                    sources = sources_text(result.citations)
                    self._sent.append(sources)
                    out.append(self._delta({"content": sources}))
                notes = url_annotations(result, "".join(self._sent), self.base_url)
                delta = {"annotations": notes} if notes else {}
                out.append(self._delta(delta, result.finish_reason, **_extras(result)))
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
    rid = new_response_id()
    if not body.stream:
        asked = service.chat(_query(body), principal=principal, response_id=rid, api="chat.completions")
        result = await unless_disconnected(request, asked)
        content = result.answer + (sources_text(result.citations) if inline else "")
        message = {
            "role": "assistant",
            "content": content,
            "annotations": url_annotations(result, content, str(request.base_url)),
        }
        answer = {
            "id": f"chatcmpl-{rid.removeprefix('resp_')}",
            "object": "chat.completion",
            "created": created,
            "model": result.collection,
            "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
            "usage": result.usage,
            **_extras(result),
        }
        headers = {
            CITATIONS_HEADER: citations_header(result.citations),
            **answer_headers(rid, result.experiment, result.arm),
        }
        return JSONResponse(answer, headers=headers)
    query = _query(body)
    chunks = CompletionChunks(
        id=f"chatcmpl-{rid.removeprefix('resp_')}",
        created=created,
        # Resolved here because every chunk names the collection, before the answer (which has it) is
        # done; the service gets the query as the client sent it (its limits apply to what was asked).
        model=query.resolve(service.settings).collection,
        inline_citations=inline,
        include_usage=bool((body.stream_options or {}).get("include_usage")),
        base_url=str(request.base_url),
    )
    events = service.stream(query, principal=principal, response_id=rid, api="chat.completions")
    return await sse_response(events, chunks, request, response_id=rid)


@router.get("/v1/models")
async def list_models(retrieval: RetrievalServiceDep, principal: Reader) -> dict[str, Any]:
    """The caller's collections (those its key may touch), as OpenAI models."""
    names = await retrieval.visible_collections(principal)
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": 0, "owned_by": principal.tenant} for n in names],
    }


class CompletionRequest(BaseModel):
    """OpenAI's legacy text completions (`/v1/completions`), which LlamaIndex's `OpenAILike` calls by
    default (`is_chat_model=False`): the prompt is answered as one question from the collection."""

    model_config = ConfigDict(extra="allow")
    model: str = "ragserver"
    prompt: str | list[str] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stream_options: dict[str, Any] | None = None
    filters: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=1, le=50)
    prompt_template: str | None = Field(None, description='ragserver prompt "name@version" (extra_body).')
    mode: Literal["dense", "bm25", "hybrid"] | None = None

    def text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise APIError(400, "invalid_request", "send one prompt per request")
            return self.prompt[0]
        return self.prompt


@dataclass
class TextCompletionChunks(SSEEncoder):
    """`text_completion` chunks: the text as it comes, then the sources and the finish reason with the
    citations, a usage chunk when asked for, and `[DONE]`."""

    id: str
    created: int
    model: str
    inline_citations: bool
    include_usage: bool

    def _chunk(self, text: str, finish: str | None = None, **extra: Any) -> SSEMessage:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return sse_message(
            {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                **extra,
            }
        )

    def encode(self, event: ChatEvent) -> list[SSEMessage]:
        match event:
            case TokenEvent(text):
                return [self._chunk(text)]
            case DoneEvent(result):
                tail = sources_text(result.citations) if self.inline_citations else ""
                out = [self._chunk(tail, result.finish_reason, **_extras(result))]
                if self.include_usage:
                    out.append(
                        sse_message(
                            {
                                "id": self.id,
                                "object": "text_completion",
                                "created": self.created,
                                "model": self.model,
                                "choices": [],
                                "usage": result.usage,
                            }
                        )
                    )
                return out
        return []

    def closing(self) -> list[SSEMessage]:
        return [sse_message("[DONE]")]


@router.post("/v1/completions")
async def completions(  # type: ignore[no-untyped-def]
    body: CompletionRequest, request: Request, service: ChatServiceDep, principal: Reader
):
    """OpenAI legacy text completions over a collection (the `model`): the prompt is the question.
    Same limits, citations and streaming as chat completions; prefer `/v1/chat/completions`."""
    query = ChatQuery(
        message=body.text(),
        collection=None if body.model in _DEFAULT_MODELS else body.model,
        history=[],
        remember=False,
        filters=body.filters,
        top_k=body.top_k,
        prompt=body.prompt_template,
        mode=body.mode,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )
    inline = service.settings.prompts.openai_inline_citations
    created = int(time.time())
    rid = new_response_id()
    if not body.stream:
        asked = service.chat(query, principal=principal, response_id=rid, api="completions")
        result = await unless_disconnected(request, asked)
        text = result.answer + (sources_text(result.citations) if inline else "")
        answer = {
            "id": f"cmpl-{rid.removeprefix('resp_')}",
            "object": "text_completion",
            "created": created,
            "model": result.collection,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": result.usage,
            **_extras(result),
        }
        return JSONResponse(answer, headers=answer_headers(rid, result.experiment, result.arm))
    chunks = TextCompletionChunks(
        id=f"cmpl-{rid.removeprefix('resp_')}",
        created=created,
        model=query.resolve(service.settings).collection,
        inline_citations=inline,
        include_usage=bool((body.stream_options or {}).get("include_usage")),
    )
    events = service.stream(query, principal=principal, response_id=rid, api="completions")
    return await sse_response(events, chunks, request, response_id=rid)
