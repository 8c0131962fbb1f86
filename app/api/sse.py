"""Server-Sent Events for both chat APIs: one framing, one mid-stream error path, one prime.

`/v1/chat` sends named events (token, citations, done, error); `/v1/chat/completions` sends OpenAI
`data:` chunks and a closing `data: [DONE]`. Each API only says what its messages contain (an
`SSEEncoder`); `sse_response` does the rest the same way for both.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, TypeVar

from sse_starlette import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request

from app.api.disconnect import unless_disconnected
from app.api.errors import error_body, public_error
from app.services.chat_types import ChatEvent, StartEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
# One SSE message as sse_starlette takes it: {"data": ...} or {"event": ..., "data": ...}.
SSEMessage = dict[str, str]
# Every answer names its response (GET /v1/responses/{id}, feedback) in this header, streaming or not.
RESPONSE_ID_HEADER = "X-Response-ID"
# An answer enrolled in an A/B experiment names it and its arm here: "<experiment>/<arm>".
ARM_HEADER = "X-RAGServer-Arm"


def answer_headers(response_id: str | None, experiment: str | None, arm: str | None) -> dict[str, str]:
    """The headers every answer carries: its response id, and its experiment arm when it has one."""
    headers = {RESPONSE_ID_HEADER: response_id} if response_id else {}
    if experiment and arm:
        headers[ARM_HEADER] = f"{experiment}/{arm}"
    return headers


# Keep-alive comment lines on a quiet stream, so proxies do not time the connection out.
PING_S = 15
# "\n" line ends, as OpenAI clients expect (some split on blank lines "\n\n").
SEP = "\n"


def sse_message(data: Any, event: str | None = None) -> SSEMessage:
    """An SSE message: `data` as JSON (a str goes as it is, e.g. OpenAI's `[DONE]`), named `event`."""
    text = data if isinstance(data, str) else json.dumps(data)
    return {"data": text} if event is None else {"event": event, "data": text}


class SSEEncoder:
    """How one API spells a chat stream. Subclasses override `encode`, and `opening`/`closing` when the
    protocol has messages around the events."""

    # The event name of an in-band error message (None: a plain `data:` message, as OpenAI sends).
    error_event: str | None = None

    def opening(self) -> list[SSEMessage]:
        """Messages before the first event."""
        return []

    def encode(self, event: ChatEvent) -> list[SSEMessage]:
        """The messages for one event of the chat stream (none for events the protocol leaves out)."""
        raise NotImplementedError

    def closing(self) -> list[SSEMessage]:
        """Messages after the last event, also after an error."""
        return []


async def prime(
    events: AsyncGenerator[T, None], request: Request | None = None
) -> tuple[list[T], AsyncGenerator[T, None]]:
    """Run a stream up to its first event, so errors before any output (unknown collection, bad
    prompt, server busy, deadline passed) still become a proper JSON error response instead of a
    broken event stream. With `request`, a client that leaves meanwhile cancels it (`ClientDisconnect`).

    Returns the events read so far and the stream, which goes on after them."""

    async def head() -> list[T]:
        # A chat stream's `StartEvent` (its ids) comes before any output but is not output: priming goes
        # on to the first token, so a failure before the answer starts is still a JSON error.
        read: list[T] = []
        try:
            while not read or isinstance(read[-1], StartEvent):
                read.append(await anext(events))
        except StopAsyncIteration:
            pass
        return read

    try:
        # One watch on the connection for the whole head, not one per event.
        return await (head() if request is None else unless_disconnected(request, head())), events
    except BaseException:
        await events.aclose()
        raise


async def encode_stream(
    head: list[ChatEvent], events: AsyncGenerator[ChatEvent, None], encoder: SSEEncoder
) -> AsyncIterator[SSEMessage | bytes]:
    """The SSE messages of a chat stream that `head` began; a failure mid-stream is reported in-band,
    since the 200 status line has already gone out: the same code and short message a JSON error would
    carry, details in the server log only.

    What was read before the response started goes out as one chunk: one write to the socket, not one
    per message, before the first token reaches the client."""
    # Closing this closes the stream under it at once (a client gone stops the generation).
    async with aclosing(events):
        try:
            first = [*encoder.opening(), *(item for event in head for item in encoder.encode(event))]
            if first:
                yield b"".join(
                    ServerSentEvent(m["data"], event=m.get("event"), sep=SEP).encode() for m in first
                )
            async for event in events:
                for item in encoder.encode(event):
                    yield item
        except Exception as exc:
            error = public_error(exc)
            log.warning("chat stream failed mid-way: %s (%s)", error.code, type(exc).__name__)
            yield sse_message(error_body(error.code, error.message), encoder.error_event)
    for item in encoder.closing():
        yield item


async def sse_response(
    events: AsyncGenerator[ChatEvent, None],
    encoder: SSEEncoder,
    request: Request | None = None,
    *,
    response_id: str | None = None,
) -> EventSourceResponse:
    """A streaming response for a chat stream, primed first (see `prime`): raises what the stream
    raises before its first event. `response_id` goes in the `X-Response-ID` header."""
    head, rest = await prime(events, request)
    start = next((e for e in head if isinstance(e, StartEvent)), None)
    headers = (
        answer_headers(response_id, start.experiment, start.arm)
        if start
        else answer_headers(response_id, None, None)
    )
    return EventSourceResponse(encode_stream(head, rest, encoder), ping=PING_S, sep=SEP, headers=headers)
