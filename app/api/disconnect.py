"""Cancel work whose client has gone: a chat answer nobody will read must not keep the model busy.

Streaming responses learn of a disconnect from sse-starlette, which closes the event stream; a plain
JSON answer (or a stream still before its first event) is awaited here beside a watch on the
connection, and cancelled as soon as the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects. Called once the body has been read, so `receive` has
    nothing left to give but the disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or `ClientDisconnect` (with `work` cancelled and finished first) when the
    client disconnects before it is done. Cancelling the caller cancels `work` too."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task  # let its cleanup (stopping the generation) run before we go on
    if task.cancelled():
        container = getattr(request.app.state, "container", None)
        if container is not None:
            container.metrics.chat_aborted.labels(reason="client_gone").inc()
        raise ClientDisconnect()
    return task.result()
