"""OpenAI's Responses API (`POST /v1/responses`) over a collection (the `model`), for the clients that
use it: LangChain's `ChatOpenAI(use_responses_api=True)`, the OpenAI Agents SDK, `client.responses`.

The answer is one `message` output item whose `output_text` part carries the citations as
`url_citation` annotations (the document's URL in ragserver), which those clients keep; the top-level
`citations` field is there too. Streaming sends the Responses event sequence (`response.created`, ...,
`response.output_text.delta`, ..., `response.completed`). Conversation state lives in the request's
`input` (as with chat completions): `previous_response_id` is refused with a clear error.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ChatServiceDep
from app.api.disconnect import unless_disconnected
from app.api.errors import APIError
from app.api.guards import Reader
from app.api.openai.router import _DEFAULT_MODELS, sources_text, url_annotations
from app.api.sse import SSEEncoder, SSEMessage, answer_headers, sse_message, sse_response
from app.services.chat_service import new_response_id
from app.services.chat_types import ChatEvent, ChatQuery, ChatResult, DoneEvent, TokenEvent

router = APIRouter(tags=["openai"])


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = "ragserver"
    input: str | list[dict[str, Any]]
    instructions: str | None = Field(None, description="Ignored: ragserver's prompt template decides.")
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    previous_response_id: str | None = None
    # ragserver extensions (extra_body)
    filters: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=1, le=50)
    prompt: Any = None
    mode: Literal["dense", "bm25", "hybrid"] | None = None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text")
        )
    return ""


def to_query(body: ResponsesRequest) -> ChatQuery:
    """The chat query of a Responses request: its last user message, the user/assistant turns before it."""
    if body.previous_response_id:
        raise APIError(
            400,
            "unsupported_parameter",
            "previous_response_id is not supported: send the conversation's earlier turns in `input`",
        )
    if isinstance(body.input, str):
        turns = [{"role": "user", "content": body.input}]
    else:
        turns = [
            {"role": item["role"], "content": _text(item.get("content"))}
            for item in body.input
            if isinstance(item, dict) and item.get("role") in ("user", "assistant")
        ]
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise APIError(400, "invalid_request", "the input must end with a user message")
    return ChatQuery(
        message=turns[-1]["content"],
        collection=None if body.model in _DEFAULT_MODELS else body.model,
        history=turns[:-1],
        remember=False,
        filters=body.filters,
        top_k=body.top_k,
        prompt=body.prompt if isinstance(body.prompt, str) else None,
        mode=body.mode,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
    )


def _annotations(result: ChatResult, text: str, base_url: str) -> list[dict[str, Any]]:
    """Responses annotations are flat: {type, url, title, start_index, end_index}."""
    return [
        {"type": "url_citation", **note["url_citation"]} for note in url_annotations(result, text, base_url)
    ]


@dataclass
class ResponseShape:
    """The ids and settings every event and the final object repeat."""

    id: str
    message_id: str
    created_at: int
    model: str
    body: ResponsesRequest

    def part(self, text: str, annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": annotations or []}

    def item(self, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": parts,
        }

    def response(
        self, status: str, output: list[dict[str, Any]], result: ChatResult | None = None
    ) -> dict[str, Any]:
        capped = result is not None and result.finish_reason == "length"
        usage = None
        if result is not None:
            usage = {
                "input_tokens": result.usage["prompt_tokens"],
                "output_tokens": result.usage["completion_tokens"],
                "total_tokens": result.usage["total_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
        out: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if capped else status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if capped else None,
            "instructions": None,
            "max_output_tokens": self.body.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": False,
            "temperature": self.body.temperature,
            "tool_choice": "none",
            "tools": [],
            "top_p": None,
            "text": {"format": {"type": "text"}},
            "metadata": {},
            "usage": usage,
        }
        if result is not None:
            out["citations"] = [c.to_dict() for c in result.citations]
            out["ragserver"] = {
                "response_id": result.response_id,
                "prompt": result.prompt,
                "model": result.model,
                "abstained": result.abstained,
                "experiment": result.experiment,
                "arm": result.arm,
                "answered_by": result.answered_by,
                "route": result.route,
            }
        return out


def completed(shape: ResponseShape, result: ChatResult, text: str, base_url: str) -> dict[str, Any]:
    part = shape.part(text, _annotations(result, text, base_url))
    return shape.response("completed", [shape.item([part], "completed")], result)


@dataclass
class ResponseEvents(SSEEncoder):
    """The Responses streaming events, each named by its `type` and numbered by `sequence_number`."""

    shape: ResponseShape
    inline_citations: bool
    base_url: str
    _sequence: int = 0
    _text: list[str] = field(default_factory=list)

    def _event(self, kind: str, **data: Any) -> SSEMessage:
        message = sse_message({"type": kind, "sequence_number": self._sequence, **data}, kind)
        self._sequence += 1
        return message

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.shape.message_id, "output_index": 0, "content_index": 0}

    def opening(self) -> list[SSEMessage]:
        return [
            self._event("response.created", response=self.shape.response("in_progress", [])),
            self._event("response.in_progress", response=self.shape.response("in_progress", [])),
            self._event(
                "response.output_item.added", output_index=0, item=self.shape.item([], "in_progress")
            ),
            self._event("response.content_part.added", **self._where(), part=self.shape.part("")),
        ]

    def encode(self, event: ChatEvent) -> list[SSEMessage]:
        match event:
            case TokenEvent(text):
                self._text.append(text)
                return [self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])]
            case DoneEvent(result):
                out = []
                if self.inline_citations and result.citations:
                    sources = sources_text(result.citations)
                    self._text.append(sources)
                    out.append(
                        self._event("response.output_text.delta", **self._where(), delta=sources, logprobs=[])
                    )
                text = "".join(self._text)
                final = completed(self.shape, result, text, self.base_url)
                part = final["output"][0]["content"][0]
                out += [
                    self._event("response.output_text.done", **self._where(), text=text, logprobs=[]),
                    self._event("response.content_part.done", **self._where(), part=part),
                    self._event("response.output_item.done", output_index=0, item=final["output"][0]),
                    self._event(
                        f"response.{'incomplete' if final['status'] == 'incomplete' else 'completed'}",
                        response=final,
                    ),
                ]
                return out
        return []


@router.post("/v1/responses")
async def create_response(  # type: ignore[no-untyped-def]
    body: ResponsesRequest, request: Request, service: ChatServiceDep, principal: Reader
):
    """OpenAI Responses over a collection (the `model`), streaming or not, with citations as
    `url_citation` annotations of the output text. Same limits as the other chat APIs."""
    query = to_query(body)
    inline = service.settings.prompts.openai_inline_citations
    rid = new_response_id()
    shape = ResponseShape(
        id=rid,
        message_id=f"msg_{uuid.uuid4().hex}",
        created_at=int(time.time()),
        model=query.resolve(service.settings).collection,
        body=body,
    )
    base_url = str(request.base_url)
    if not body.stream:
        asked = service.chat(query, principal=principal, response_id=rid, api="responses")
        result = await unless_disconnected(request, asked)
        text = result.answer + (sources_text(result.citations) if inline else "")
        headers = answer_headers(rid, result.experiment, result.arm)
        return JSONResponse(completed(shape, result, text, base_url), headers=headers)
    events = ResponseEvents(shape, inline, base_url)
    stream = service.stream(query, principal=principal, response_id=rid, api="responses")
    return await sse_response(stream, events, request, response_id=rid)
