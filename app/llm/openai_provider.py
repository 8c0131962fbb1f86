"""Any OpenAI-compatible chat endpoint: vLLM, OpenAI, Gemini's /v1beta/openai, the scripted test server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import httpx
import openai
from openai import AsyncOpenAI
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from app.llm.base import (
    Completion,
    LLMDelta,
    LLMError,
    Messages,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from app.timeouts import run_until

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RETRYABLE_STATUS = {408, 409, 429}


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRYABLE_STATUS or exc.status_code >= 500
    # APITimeoutError is an APIConnectionError; raw httpx errors escape while a stream is being read.
    return isinstance(exc, openai.APIConnectionError | httpx.TransportError)


async def _replay(head: list[Any], stream: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    for chunk in head:
        yield chunk
    async for chunk in stream:
        yield chunk


class OpenAICompatibleLLM:
    """Chat completions over the OpenAI HTTP API, with bounded time and tenacity retries.

    Every HTTP wait is bounded by `timeout_s` (connect, and each read: for a stream, the time to the
    next chunk), and the whole call (retries, backoff, every chunk of a stream) by `deadline_s`, so an
    upstream that drips a byte just inside each read timeout still cannot hold a caller. 429, 408, 409,
    5xx, connection errors and timeouts are retried `max_retries` times with exponential backoff plus
    jitter; then LLMError. A stream is retried only while no text has been yielded, so a caller never
    sees a repeated prefix.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        default_max_tokens: int = 256,
        default_temperature: float = 0.0,
        *,
        deadline_s: float = 100.0,
        context_window: int = 8192,
        health_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ) -> None:
        self.model_name = model
        self.base_url = base_url
        self.max_retries = max_retries
        self.deadline_s = deadline_s
        self.context_window = context_window
        self.default_max_tokens = default_max_tokens
        self.default_temperature = default_temperature
        self._health_timeout_s = health_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        # The client's own retries are off: tenacity owns the policy, so attempts are counted once.
        self._client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)

    @property
    def _provider(self) -> str:
        return f"openai-compatible {self.model_name!r} at {self.base_url}"

    def _request(
        self, messages: Messages, max_tokens: int | None, temperature: float | None
    ) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "messages": messages,
            "max_tokens": max_tokens if max_tokens is not None else self.default_max_tokens,
            "temperature": temperature if temperature is not None else self.default_temperature,
        }

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning("%s: attempt %d failed (%r), retrying", self._provider, state.attempt_number, exc)

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` under the retry policy; any final failure becomes LLMError."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential_jitter(
                initial=self._backoff_initial_s, max=self._backoff_max_s, jitter=self._backoff_initial_s
            ),
            retry=retry_if_exception(_is_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            # The attempt loop awaits the call itself: tenacity 9's `await retrying(fn)` no longer
            # awaits what a plain (non-async) callable such as a lambda returns.
            async for attempt in retrying:
                with attempt:
                    return await call()
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise self._error(exc) from exc
        raise AssertionError("unreachable: tenacity reraises the last failure")

    def _error(self, exc: BaseException) -> LLMError:
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        timed_out = isinstance(exc, openai.APITimeoutError | httpx.TimeoutException)
        kind = "timed out" if timed_out else "failed"
        return LLMError(f"{kind}: {exc!r}", provider=self._provider, status_code=status, timed_out=timed_out)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.deadline_s

    def _past_deadline(self) -> LLMError:
        return LLMError(
            f"timed out: no complete answer within the {self.deadline_s:g} s call deadline",
            provider=self._provider,
            timed_out=True,
        )

    async def complete(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Completion:
        """Answer in one piece; raises LLMError once retries are spent or the call deadline passed."""
        request = self._request(messages, max_tokens, temperature)
        response = await run_until(
            self._deadline(),
            self._with_retries(lambda: self._client.chat.completions.create(**request)),
            self._past_deadline,
        )
        if not response.choices:
            raise LLMError("response had no choices", provider=self._provider)
        choice = response.choices[0]
        text = choice.message.content or ""
        if response.usage is not None:
            usage = Usage(response.usage.prompt_tokens, response.usage.completion_tokens)
        else:
            usage = Usage(estimate_prompt_tokens(messages), estimate_tokens(text))
        return Completion(text=text, model=self.model_name, usage=usage, finish_reason=choice.finish_reason)

    async def _open_stream(self, request: dict[str, Any]) -> tuple[Any, list[Any]]:
        """Open a stream and read up to the first chunk with text (or its end), so failures before
        the first token are retried with the rest of the request."""
        stream = await self._client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        head: list[Any] = []
        try:
            async for chunk in stream:
                head.append(chunk)
                if chunk.usage is not None or any(c.delta.content for c in chunk.choices):
                    break
        except BaseException:
            await stream.close()
            raise
        return stream, head

    async def stream(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> AsyncIterator[LLMDelta]:
        """Yield text deltas, then one final delta with usage; raises LLMError (also when the call
        deadline passes mid-stream: each read is bounded by it, not the time the caller holds a delta)."""
        request = self._request(messages, max_tokens, temperature)
        deadline = self._deadline()
        stream, head = await run_until(
            deadline, self._with_retries(lambda: self._open_stream(request)), self._past_deadline
        )
        usage: Usage | None = None
        finish: str | None = None
        n_deltas = 0
        try:
            async with aclosing(_replay(head, stream)) as chunks:
                while True:
                    try:
                        chunk = await run_until(deadline, anext(chunks), self._past_deadline)
                    except StopAsyncIteration:
                        break
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        if choice.finish_reason:
                            finish = choice.finish_reason
                        if choice.delta.content:
                            n_deltas += 1
                            yield LLMDelta(text=choice.delta.content, model=self.model_name)
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            # Text already reached the caller: retrying would repeat it, so give up.
            raise self._error(exc) from exc
        finally:
            await stream.close()
        if usage is None:
            usage = Usage(estimate_prompt_tokens(messages), n_deltas)
        yield LLMDelta(text="", usage=usage, model=self.model_name, finish_reason=finish)

    async def health(self) -> bool:
        """True when GET /models answers within the health timeout."""
        try:
            client = self._client.with_options(timeout=self._health_timeout_s, max_retries=0)
            await client.models.list()
        except Exception as exc:
            logger.info("%s: health check failed: %r", self._provider, exc)
            return False
        return True

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()
