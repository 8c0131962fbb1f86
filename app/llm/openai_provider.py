"""Any OpenAI-compatible chat endpoint: vLLM, OpenAI, Gemini's /v1beta/openai, the scripted test server.

Spoken over plain httpx: `POST {base_url}/chat/completions` (JSON, or Server-Sent Events with
`stream`) and `GET {base_url}/models`, with `Authorization: Bearer <api_key>`. The `openai` client did the
same for about 1.5 ms more of Python per call (typed-parameter transforms, request options, a pydantic
object per stream chunk), on the chat hot path before the first token (docs/BENCHMARKS.md, "The chat hot
path, profiled").

A stream is closed at its `data: [DONE]`, before the end of its body, which drops its connection, as the
`openai` client did. Reading on to the end to keep the connection was measured slower with 64 streams at
once: inside the answer it held a generation slot for a turn of the upstream's loop, and even done in the
background the pool of kept connections cost more than connecting again on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import httpx
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
# The openai client's pool: room for many streams at once, and for keeping them open between answers.
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


class UpstreamError(Exception):
    """The server answered, but with an error: a non-2xx status (`status_code`), or an error object in
    place of a stream chunk (no status)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @classmethod
    async def of(cls, response: httpx.Response) -> UpstreamError:
        """The error of a non-2xx response (its body is read, and cut, for the message)."""
        body = (await response.aread()).decode("utf-8", "replace")
        return cls(f"HTTP {response.status_code}: {body[:500]}", response.status_code)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamError):
        status = exc.status_code
        return status is not None and (status in _RETRYABLE_STATUS or status >= 500)
    # Connection errors and timeouts, before the response or while a stream is read.
    return isinstance(exc, httpx.TransportError)


def _usage(data: dict[str, Any]) -> Usage | None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


async def _chunks(lines: AsyncIterator[str]) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON chunks of a chat completions stream (its body's lines), up to `data: [DONE]`;
    UpstreamError for an error object in place of a chunk."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue
        if line or not data:  # another field (event:, id:, a comment), or a blank line alone
            continue
        payload, data = "\n".join(data), []
        if payload.startswith("[DONE]"):
            return
        chunk = json.loads(payload)
        if isinstance(chunk, dict) and chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise UpstreamError(str(message or "an error occurred during streaming"))
        yield chunk


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
        # Retries are tenacity's alone (`_with_retries`), so attempts are counted once.
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            limits=_LIMITS,
        )

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
        except (UpstreamError, httpx.HTTPError) as exc:
            raise self._error(exc) from exc
        raise AssertionError("unreachable: tenacity reraises the last failure")

    def _error(self, exc: BaseException) -> LLMError:
        status = exc.status_code if isinstance(exc, UpstreamError) else None
        timed_out = isinstance(exc, httpx.TimeoutException)
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

    async def _post(self, request: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post("/chat/completions", json=request)
        if not response.is_success:
            raise await UpstreamError.of(response)
        data = response.json()
        return data if isinstance(data, dict) else {}

    async def complete(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> Completion:
        """Answer in one piece; raises LLMError once retries are spent or the call deadline passed."""
        request = self._request(messages, max_tokens, temperature)
        response = await run_until(
            self._deadline(), self._with_retries(lambda: self._post(request)), self._past_deadline
        )
        choices = response.get("choices")
        if not choices:
            raise LLMError("response had no choices", provider=self._provider)
        choice = choices[0]
        text = (choice.get("message") or {}).get("content") or ""
        usage = _usage(response) or Usage(estimate_prompt_tokens(messages), estimate_tokens(text))
        return Completion(
            text=text, model=self.model_name, usage=usage, finish_reason=choice.get("finish_reason")
        )

    async def _open_stream(
        self, request: dict[str, Any]
    ) -> tuple[httpx.Response, AsyncGenerator[dict[str, Any], None], list[dict[str, Any]]]:
        """Open a stream and read up to the first chunk with text (or its end), so failures before
        the first token are retried with the rest of the request."""
        body = {**request, "stream": True, "stream_options": {"include_usage": True}}
        response = await self._client.send(
            self._client.build_request("POST", "/chat/completions", json=body), stream=True
        )
        head: list[dict[str, Any]] = []
        try:
            if not response.is_success:
                raise await UpstreamError.of(response)
            chunks = _chunks(response.aiter_lines())
            async for chunk in chunks:
                head.append(chunk)
                if chunk.get("usage") is not None or any(
                    (c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()
                ):
                    break
        except BaseException:
            await response.aclose()
            raise
        return response, chunks, head

    async def stream(
        self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None
    ) -> AsyncIterator[LLMDelta]:
        """Yield text deltas, then one final delta with usage; raises LLMError (also when the call
        deadline passes mid-stream: each read is bounded by it, not the time the caller holds a delta)."""
        request = self._request(messages, max_tokens, temperature)
        deadline = self._deadline()
        response, stream, head = await run_until(
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
                    usage = _usage(chunk) or usage
                    for choice in chunk.get("choices") or ():
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            n_deltas += 1
                            yield LLMDelta(text=text, model=self.model_name)
        except (UpstreamError, httpx.HTTPError) as exc:
            # Text already reached the caller: retrying would repeat it, so give up.
            raise self._error(exc) from exc
        finally:
            await stream.aclose()
            await response.aclose()
        if usage is None:
            usage = Usage(estimate_prompt_tokens(messages), n_deltas)
        yield LLMDelta(text="", usage=usage, model=self.model_name, finish_reason=finish)

    async def health(self) -> bool:
        """True when GET /models answers within the health timeout."""
        try:
            response = await self._client.get("/models", timeout=self._health_timeout_s)
            if not response.is_success:
                raise UpstreamError(f"HTTP {response.status_code}", response.status_code)
        except Exception as exc:
            logger.info("%s: health check failed: %r", self._provider, exc)
            return False
        return True

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()
