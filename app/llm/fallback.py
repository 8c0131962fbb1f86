"""A primary LLM with a second one that takes over when the primary fails for good."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from app.llm.base import (
    LLM,
    Completion,
    LLMDelta,
    LLMError,
    Messages,
    context_window_of,
    prompt_token_counter,
)

logger = logging.getLogger(__name__)


class FallbackLLM:
    """Send each call to `primary`; when it raises LLMError, send the same call to `fallback`.

    A stream switches over only while nothing has been yielded, so the caller never receives a mix
    of two answers. `Completion.model` / `LLMDelta.model` name the backend that actually answered.
    """

    def __init__(self, primary: LLM, fallback: LLM) -> None:
        self.primary = primary
        self.fallback = fallback
        self.model_name = primary.model_name
        # A prompt must fit whichever of the two answers it.
        self.context_window = min(context_window_of(primary, 8192), context_window_of(fallback, 8192))
        self.count_prompt_tokens = prompt_token_counter(primary)

    async def complete(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Completion:
        """Answer with the primary, or with the fallback if the primary raises LLMError."""
        try:
            return await self.primary.complete(messages, max_tokens=max_tokens, temperature=temperature)
        except LLMError as exc:
            logger.warning("primary LLM failed, using fallback %s: %s", self.fallback.model_name, exc)
        return await self.fallback.complete(messages, max_tokens=max_tokens, temperature=temperature)

    async def stream(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> AsyncIterator[LLMDelta]:
        """Stream from the primary; switch to the fallback only if it failed before its first delta."""
        yielded = False
        try:
            async for delta in self.primary.stream(messages, max_tokens=max_tokens, temperature=temperature):
                yielded = True
                yield delta
            return
        except LLMError as exc:
            if yielded:
                raise
            logger.warning("primary LLM failed, using fallback %s: %s", self.fallback.model_name, exc)
        async for delta in self.fallback.stream(messages, max_tokens=max_tokens, temperature=temperature):
            yield delta

    async def health(self) -> bool:
        """True when either backend can answer."""
        return await self.primary.health() or await self.fallback.health()

    async def aclose(self) -> None:
        """Close both backends."""
        try:
            await self.primary.aclose()
        finally:
            await self.fallback.aclose()
