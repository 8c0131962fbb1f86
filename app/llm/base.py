"""The LLM backend contract: what every provider (OpenAI-compatible, local SmolLM2, fallback) offers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ingest.errors import DomainError

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


# A model writing the next turn of the conversation ("\nUser: ...") instead of ending its answer.
NEXT_TURN = re.compile(r"\n\s*(?:user|assistant|human|question|q)\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class LLMDelta:
    """One piece of a streamed answer; the last one yielded carries `usage` and `finish_reason`
    ("stop", or "length" when max_tokens cut it; its text may be empty)."""

    text: str
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None


class LLMError(DomainError):
    """A provider failed for good: retries exhausted, unreachable, timed out, or refused the request.

    The message names the provider (and its base URL) so the server log says which backend broke; it is
    for the log only: clients get a generic error (`public_message`). `timed_out` when it failed by
    running out of time (504 `llm_timeout`, else 502 `llm_unavailable`).
    """

    @property  # type: ignore[misc]
    def kind(self) -> str:  # type: ignore[override]
        return "timeout" if self.timed_out else "upstream_failed"

    @property
    def code(self) -> str:  # type: ignore[override]
        return "llm_timeout" if self.timed_out else "llm_unavailable"

    @property
    def public_message(self) -> str:
        if self.timed_out:
            return "the language model did not answer in time"
        return "the language model is unavailable"

    def __init__(
        self, message: str, *, provider: str, status_code: int | None = None, timed_out: bool = False
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status_code = status_code
        self.timed_out = timed_out


@runtime_checkable
class LLM(Protocol):
    """A chat model. Implementations: OpenAICompatibleLLM, LocalLLM, FallbackLLM, and ScriptedLLM (in
    process, for tests and demos).

    Optional, read with `context_window_of` / `prompt_token_counter`: `context_window` (tokens, prompt
    plus answer) and `count_prompt_tokens(messages)` (exact, with the model's tokenizer and chat
    template); callers fall back to settings and an estimate.
    """

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


def context_window_of(llm: object, default: int) -> int:
    """The model's context window: its own `context_window`, else `default`."""
    window = getattr(llm, "context_window", None)
    return int(window) if isinstance(window, int) and window > 0 else default


def prompt_token_counter(llm: object) -> Callable[[Messages], int]:
    """How to count a prompt's tokens for `llm`: its own `count_prompt_tokens`, else an estimate that
    errs high (`approx_prompt_tokens`)."""
    count = getattr(llm, "count_prompt_tokens", None)
    return count if callable(count) else approx_prompt_tokens


def approx_tokens(text: str) -> int:
    """A token estimate that errs high: whitespace words * 1.3, or characters / 3 for text with few
    spaces (code, URLs, CJK), whichever is larger."""
    return int(max(len(text.split()) * 1.3, len(text) / 3)) + 1


def approx_prompt_tokens(messages: Messages) -> int:
    """`approx_tokens` of every message, plus a few tokens a message for the chat template."""
    return sum(approx_tokens(m.get("content") or "") + 4 for m in messages) + 3


def estimate_tokens(text: str) -> int:
    """Rough token count for providers that report no usage: whitespace words."""
    return len(text.split())


def estimate_prompt_tokens(messages: Messages) -> int:
    """Rough prompt token count (whitespace words of every message) for providers that report none."""
    return sum(estimate_tokens(m.get("content") or "") for m in messages)
