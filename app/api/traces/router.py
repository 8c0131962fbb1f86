"""Response traces and feedback: `GET /v1/responses/{id}`, `POST /v1/responses/{id}/feedback`,
`POST /v1/responses/{id}/events`.

One resource per answer, under every id a client saw: `resp_...` (`response_id` of `/v1/chat`, the
Responses API's `id`, the `X-Response-ID` header) or the `chatcmpl-...` / `cmpl-...` id of an
OpenAI-compatible completion. The object is a Responses-API `response` with the trace fields added.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import get_container
from app.api.guards import Reader
from app.container import Container
from app.services.errors import InvalidInput
from app.services.traces import TraceService
from app.traces.store import Trace
from ingest.vector_index import split_store_name

router = APIRouter(tags=["responses"])


def get_traces(container: Annotated[Container, Depends(get_container)]) -> TraceService:
    return container.traces


TracesDep = Annotated[TraceService, Depends(get_traces)]


class FeedbackIn(BaseModel):
    """Any subset, with at least one of rating, score or correction."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal["up", "down"] | None = None
    score: float | None = Field(None, ge=0, le=1)
    comment: str | None = None
    correction: str | None = Field(
        None, description="The answer it should have been: the regression set's reference."
    )
    tags: list[str] = []
    reviewed: bool = Field(False, description="A reviewer marked it for the regression set.")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["citation_opened", "copied", "regenerated", "shared"]
    citation: int | None = Field(None, ge=1, description="The [n] of the citation opened.")


def response_object(trace: Trace, base_url: str) -> dict[str, Any]:
    """The Responses-API view of a trace, with the trace fields added."""
    collection = split_store_name(trace.collection)[1]
    annotations = [
        {
            "type": "url_citation",
            "url": f"{base_url.rstrip('/')}/v1/collections/{collection}/documents/{c.get('document_id')}",
            "title": c.get("title") or c.get("source") or "",
            "start_index": 0,
            "end_index": 0,
        }
        for c in trace.citations
    ]
    view = trace.to_dict()
    view.update(
        id=trace.response_id,
        object="response",
        status="completed" if trace.finish_reason != "length" else "incomplete",
        output=[
            {
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": trace.answer, "annotations": annotations}],
            }
        ],
        output_text=trace.answer,
        abstained=trace.outcome == "abstained",
        collection=collection,
    )
    return view


def summary(trace: Trace) -> dict[str, Any]:
    return {
        "id": trace.response_id,
        "created_at": trace.created_at,
        "collection": split_store_name(trace.collection)[1],
        "question": trace.question,
        "answer": trace.answer[:500],
        "outcome": trace.outcome,
        "abstained": trace.outcome == "abstained",
        "ratings": [f.rating for f in trace.feedback if f.rating],
        "corrections": [f.correction for f in trace.feedback if f.correction],
        "reviewed": any(f.reviewed for f in trace.feedback),
    }


@router.get("/v1/responses")
async def list_responses(
    service: TracesDep,
    principal: Reader,
    rating: Literal["up", "down"] | None = None,
    collection: str | None = None,
    since: str | None = Query(None, description='"24h", "7d", or a Unix timestamp.'),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """Answers the caller may see, newest first: e.g. `?rating=down` for the review queue."""
    found = await service.search(
        principal=principal, rating=rating, collection=collection, since=_since(since), limit=limit
    )
    return {"responses": [summary(t) for t in found]}


@router.get("/v1/feedback/export", response_class=PlainTextResponse)
async def export_feedback(
    service: TracesDep,
    principal: Reader,
    rating: Literal["up", "down"] | None = None,
    collection: str | None = None,
    since: str | None = Query(None, description='"24h", "7d", or a Unix timestamp.'),
    reviewed: bool = False,
) -> PlainTextResponse:
    """The regression set as JSON lines (what `ragserver feedback export` writes): one question per
    answer with feedback, runnable with `ragserver eval rag --questions FILE --collection C`."""
    rows = await service.regression_rows(
        principal=principal, rating=rating, collection=collection, since=_since(since), reviewed_only=reviewed
    )
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    headers = {"Content-Disposition": 'attachment; filename="regression.jsonl"'}
    return PlainTextResponse(body, media_type="application/x-ndjson", headers=headers)


def _since(text: str | None) -> float | None:
    from app.auth.admin import since_timestamp

    try:
        return since_timestamp(text)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_request") from exc


@router.get("/v1/responses/{response_id}", responses={404: {"description": "No such response"}})
async def get_response(
    response_id: str, request: Request, service: TracesDep, principal: Reader
) -> dict[str, Any]:
    """How an answer was made (question, search query, every chunk shown to the model, prompt, model,
    parameters, latency, usage) with its feedback as a list; accepts `resp_...`, `chatcmpl-...` and
    `cmpl-...` ids."""
    trace = await service.get(response_id, principal=principal)
    return response_object(trace, str(request.base_url))


@router.post(
    "/v1/responses/{response_id}/feedback",
    responses={
        400: {"description": "Nothing given, or a bad value"},
        404: {"description": "No such response"},
    },
)
async def post_feedback(
    response_id: str, body: FeedbackIn, service: TracesDep, principal: Reader
) -> dict[str, Any]:
    """Rate an answer (`{"rating": "up"|"down", "score": 0..1, "comment", "correction", "tags"}`, at least
    one of rating, score or correction). The same caller sending again replaces its feedback."""
    stored = await service.feedback(response_id, body.model_dump(exclude_unset=True), principal=principal)
    return {"response_id": response_id, "feedback": stored.to_dict()}


@router.post(
    "/v1/responses/{response_id}/events",
    status_code=204,
    responses={400: {"description": "Unknown type or citation"}, 404: {"description": "No such response"}},
)
async def post_event(response_id: str, event: EventIn, service: TracesDep, principal: Reader) -> None:
    """Engagement: `citation_opened` (with `citation`: its [n]), `copied`, `regenerated`, `shared`."""
    await service.event(response_id, event.type, event.citation, principal=principal)
