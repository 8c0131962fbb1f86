"""The LLM backend contract: what every provider (OpenAI-compatible, local SmolLM2, fallback) offers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Usage:
    """Token counts of one call, as reported by the provider (or estimated when it reports none)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """A whole, non-streamed answer."""

    text: str
    model: str
    usage: Usage
    finish_reason: str | None


@dataclass(frozen=True)
class LLMDelta:
    """One piece of a streamed answer; the last one yielded carries `usage` (its text may be empty)."""

    text: str
    usage: Usage | None = None
    model: str | None = None


class LLMError(Exception):
    """A provider failed for good: retries exhausted, unreachable, timed out, or refused the request.

    The message names the provider (and its base URL) so logs say which backend broke.
    """

    def __init__(self, message: str, *, provider: str, status_code: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status_code = status_code


@runtime_checkable
class LLM(Protocol):
    """A chat model. Implementations: OpenAICompatibleLLM, LocalLLM, FallbackLLM."""

    model_name: str

    async def complete(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Completion:
        """Answer `messages` (OpenAI-style role/content dicts) in one piece; raises LLMError."""
        ...

    def stream(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> AsyncIterator[LLMDelta]:
        """Yield the answer as text deltas; the last delta carries usage. Raises LLMError."""
        ...

    async def health(self) -> bool:
        """True when the backend can answer now."""
        ...

    async def aclose(self) -> None:
        """Release connections / threads."""
        ...


def estimate_tokens(text: str) -> int:
    """Rough token count for providers that report no usage: whitespace words."""
    return len(text.split())


def estimate_prompt_tokens(messages: Messages) -> int:
    """Rough prompt token count (whitespace words of every message) for providers that report none."""
    return sum(estimate_tokens(m.get("content") or "") for m in messages)
