"""The chat use case's data: the query, a citation, the result and the events of a streamed answer.

One model per concept from the service to the wire: `ChatService` builds these, and both chat APIs
(`/v1/chat`, `/v1/chat/completions`) return them as they are. Pydantic, but no FastAPI, so services and
the eval harness can use them without the web layer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from app.services.answer_profiles import AnswerProfile
    from app.settings import Settings
    from ingest.types import ScoredChunk


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


@dataclass
class ChatQuery:
    """One chat request, as the service sees it; None means "the default from settings" (`resolve`)."""

    message: str
    conversation_id: str | None = None
    collection: str | None = None
    prompt: str | None = None
    # A model of the registry by name (None: the collection's profile, else the default model).
    model: str | None = None
    filters: dict[str, Any] | None = None
    top_k: int | None = None
    mode: str | None = None
    # Stateless callers (the OpenAI-compatible API) pass the history themselves.
    history: list[dict[str, str]] | None = None
    remember: bool = True
    max_tokens: int | None = None
    temperature: float | None = None
    # Answer-profile fields to use over the collection's profile (an experiment arm replayed offline by
    # `ragserver experiments replay`); a request carrying them is not enrolled in an experiment.
    overrides: AnswerProfile | None = None

    def resolve(self, settings: Settings, profile: AnswerProfile | None = None) -> ResolvedChatQuery:
        """This query with every default filled in: the one place chat defaults live. The request's own
        fields win, then `profile` (the collection's answer profile, an experiment arm's overrides on top),
        then `settings`."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        given = profile.values() if profile is not None else {}
        # Names: an empty string means the default too. Numbers: only None does (temperature 0 is valid).
        top_k = given.get("top_k", settings.retrieval.top_k)
        values.update(
            collection=self.collection or settings.server.default_collection,
            prompt=self.prompt or given.get("prompt") or settings.prompts.answer,
            model=self.model or given.get("model"),
            mode=self.mode or given.get("mode") or settings.retrieval.mode,
            top_k=top_k if self.top_k is None else self.top_k,
            max_tokens=settings.llm.max_tokens if self.max_tokens is None else self.max_tokens,
            temperature=settings.llm.temperature if self.temperature is None else self.temperature,
            fusion=profile.fusion_changes() if profile is not None else {},
        )
        return ResolvedChatQuery(**values)


@dataclass(kw_only=True)
class ResolvedChatQuery(ChatQuery):
    """A `ChatQuery` after `resolve`: the same fields, none of the defaults left open."""

    collection: str
    prompt: str
    top_k: int
    mode: str
    max_tokens: int
    temperature: float
    # The retriever's fusion settings a profile changes (FusionConfig field -> value).
    fusion: dict[str, Any] = field(default_factory=dict)


class Citation(BaseModel):
    """A numbered source chunk given to the model; the answer cites it as [n]."""

    n: int = Field(description="The number the answer cites it by, [n].")
    document_id: str
    source: str
    chunk_id: str
    score: float = Field(description="Retrieval score (higher is better).")
    text: str
    title: str = ""
    page: int | None = None

    @classmethod
    def from_hit(cls, n: int, hit: ScoredChunk, **extra: Any) -> Self:
        """Retrieval hit `hit` as source number `n`; source, title and page come from its metadata."""
        page = hit.metadata.get("page")
        return cls(
            n=n,
            document_id=hit.doc_id,
            source=str(hit.metadata.get("source", "")),
            chunk_id=hit.chunk_id,
            score=round(float(hit.score), 6),
            text=hit.text,
            title=str(hit.metadata.get("title", "")),
            page=int(page) if page is not None else None,
            **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """The citation as JSON data, as the APIs send it (the eval harness writes it to its rows)."""
        return self.model_dump(mode="json")


class ChatResult(BaseModel):
    """A complete answer. Its public fields are the JSON answer of `/v1/chat` (and its `done` event)."""

    conversation_id: str
    response_id: str
    answer: str
    citations: list[Citation] = Field(
        description="The sources the answer used: those it marks [n], else those holding most of its words "
        "(none when no source does)."
    )
    prompt: str = Field(description='The prompt template that produced it, "name@version".')
    model: str
    usage: dict[str, int]
    finish_reason: str = Field(
        "stop", description='"stop", or "length" when the answer was cut at max_tokens.'
    )
    abstained: bool = Field(
        False,
        description='Whether the answer says the sources do not hold one ("The documents don\'t say."; no '
        "citations) instead of answering.",
    )
    grounding: dict[str, Any] | None = Field(
        None,
        description="Judge-free check of the answer's numbers, dates and names against its citations: "
        "`score` (share found; null when it states none), `facts`, `unsupported`.",
    )
    collection: str
    collection_version: str = Field(
        "v1", description='The version of the collection that answered ("v1", "v2", ...; blue/green).'
    )
    retrieval: dict[str, Any] = Field(description="Retrieval settings used, and the search query.")
    experiment: str | None = Field(
        None, description="The A/B experiment this answer was enrolled in (None: none)."
    )
    arm: str | None = Field(None, description="The experiment's arm that answered.")
    answered_by: str = Field(
        "llm",
        description='Who answered: "llm" (retrieval and the model), "rule" (a canned answer of the '
        'collection\'s routing chain), "curated" (an approved answer), or "refused" (a rule refused).',
    )
    route: str | None = Field(None, description="The routing chain's stage that decided (a rule id, ...).")
    history_saved: bool = Field(
        False,
        description="Whether the question and answer were stored in the conversation's history (false "
        "when the history store was down: a follow-up with this conversation_id may then not find it; "
        "always false for stateless callers).",
    )
    # Internal, for the eval harness: never sent. Defaults, because FastAPI re-validates the dumped
    # answer against this model, and the dump leaves them out.
    query: str = Field("", exclude=True)
    contexts: list[Citation] = Field(default_factory=list, exclude=True)
    latency_ms: float = Field(0.0, exclude=True)


@dataclass(frozen=True)
class StartEvent:
    """The first event of a stream, before any token: the ids a client can use at once, and the
    experiment arm the request was enrolled in."""

    response_id: str
    conversation_id: str
    experiment: str | None = None
    arm: str | None = None


@dataclass(frozen=True)
class TokenEvent:
    """A piece of the answer's text, as the model produces it."""

    text: str


@dataclass(frozen=True)
class CitationsEvent:
    """The sources the finished answer cites."""

    citations: list[Citation]


@dataclass(frozen=True)
class DoneEvent:
    """The end of a streamed answer, with the complete result."""

    result: ChatResult


ChatEvent = StartEvent | TokenEvent | CitationsEvent | DoneEvent
"""What `ChatService.stream` yields: tokens, then one `CitationsEvent`, then one `DoneEvent`."""
