"""Request/response shapes of the chat API; the answer itself is `app.services.chat_types.ChatResult`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ChatRequest(BaseModel):
    message: str = Field(
        min_length=1, description="The user's question (at most limits.max_question_chars characters: 413)."
    )
    conversation_id: str | None = Field(None, description="Continue this conversation (server-side history).")
    collection: str | None = Field(None, description="Collection to answer from (default from settings).")
    stream: bool = Field(False, description="Answer as Server-Sent Events: token..., citations, done.")
    prompt: str | None = Field(
        None,
        description='Prompt template "name@version" (default: the collection\'s profile, else settings).',
    )
    model: str | None = Field(
        None,
        description="A model of the registry by name (default: the collection's profile, else the default).",
    )
    filters: dict[str, Any] | None = Field(None, description="Metadata filters for retrieval.")
    top_k: int | None = Field(None, ge=1, le=50, description="How many chunks to give the model.")
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(None, description="Retrieval mode.")
    max_tokens: int | None = Field(None, ge=1, description="At most limits.max_tokens (above it: 422).")
    temperature: float | None = Field(None, ge=0.0, le=2.0)


class TurnOut(BaseModel):
    role: str
    content: str
    created_at: float
    metadata: dict[str, Any] = {}


class ConversationOut(BaseModel):
    conversation_id: str
    turns: list[TurnOut]
