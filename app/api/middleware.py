"""The server's ASGI middlewares, outermost first: `RequestContext` (request id, last-resort 500),
`RequestMetrics` (route, status, latency), `BodyTimeout` (a body must keep arriving) and `BodyLimit`
(JSON bodies capped while they stream in).

Plain ASGI classes: starlette's BaseHTTPMiddleware would pipe every streamed event through an extra
task and memory stream.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body
from app.logging_setup import request_id_var
from ingest.errors import DomainError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept when it is this tame (it goes into logs and headers); else a fresh one is made.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# What a request cancelled at shutdown is told to wait before retrying (another replica, or this one back).
SHUTDOWN_RETRY_AFTER_S = 2
# nginx's "client closed request", for metrics of requests whose client left before the answer.
CLIENT_CLOSED_STATUS = 499


def valid_request_id(value: str | None) -> str | None:
    """`value` when it is a well-formed request id (1-128 of [A-Za-z0-9._-]), else None."""
    return value if value is not None and _VALID_REQUEST_ID.fullmatch(value) else None


class HTTPMiddleware:
    """Base of the middlewares here: non-HTTP scopes (lifespan) pass straight through to the app."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestContext(HTTPMiddleware):
    """Gives every request an id, the client's `X-Request-ID` when well-formed, else a fresh one; sets
    it for the logs (`app.logging_setup.request_id_var`) and on every response's `X-Request-ID` header.

    Outermost, so it also answers what nothing else did: an unhandled exception becomes a logged 500
    JSON error carrying the id, a request the server cancels at shutdown a 503 `shutting_down`, and a
    client that left (`ClientDisconnect`) gets nothing.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = valid_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER)) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            log.info("client disconnected before the answer: %s %s", scope["method"], scope["path"])
        except asyncio.CancelledError:
            # Only the server cancels a request's task: at shutdown, once server.shutdown_timeout_s has
            # passed. The work under it (the generation) is stopped; the client is told to come back.
            log.warning("request cancelled at shutdown: %s %s", scope["method"], scope["path"])
            if not started:
                body = error_body("shutting_down", "the server is shutting down; retry shortly")
                headers = {"Retry-After": str(SHUTDOWN_RETRY_AFTER_S), "Connection": "close"}
                await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send_with_id)
        except Exception as exc:
            log.error("unhandled error in %s %s", scope["method"], scope["path"], exc_info=exc)
            if started:
                raise  # the status line is out: the server can only cut the response
            body = error_body("internal_error", "internal server error")
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class RequestMetrics(HTTPMiddleware):
    """Counts HTTP requests by route and status and times them to the end of the response."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # an exception before the response started is a 500 to the client

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except ClientDisconnect:
            status = CLIENT_CLOSED_STATUS
            raise
        except asyncio.CancelledError:
            status = 503  # cancelled at shutdown (RequestContext answers 503 shutting_down)
            raise
        finally:
            state = getattr(scope["app"].state, "container", None) if "app" in scope else None
            if state is not None:
                # The router records the matched route in the scope; unmatched paths share one label.
                path = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.requests.labels(scope["method"], path, str(status)).inc()
                state.metrics.request_latency.labels(path).observe(time.perf_counter() - started)


class BodyTooLarge(DomainError, HTTPException):
    """A request body over the JSON body limit (HTTP 413, code `payload_too_large`). An HTTPException
    too, so FastAPI's body parsing passes it through unchanged."""

    kind, code = "too_large", "payload_too_large"

    @property
    def public_message(self) -> str:
        return str(self.detail)

    def __init__(self, limit_bytes: int):
        super().__init__(413, f"request body over the {limit_bytes // 1024} KB limit")


class BodyLimit(HTTPMiddleware):
    """Caps request bodies at `limit_bytes()` while they stream in: a declared Content-Length over it is
    refused before anything is read, and a chunked body as soon as it passes it, so no oversized body
    is ever buffered whole. Requests for which `exempt(scope)` is true (multipart uploads, which bound
    themselves) pass untouched."""

    def __init__(self, app: ASGIApp, limit_bytes: Callable[[Scope], int], exempt: Callable[[Scope], bool]):
        super().__init__(app)
        self.limit_bytes = limit_bytes
        self.exempt = exempt

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.exempt(scope):
            await self.app(scope, receive, send)
            return
        limit = self.limit_bytes(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_large = BodyTooLarge(limit)
            body = error_body(too_large.code, too_large.detail)
            await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes HTTPExceptions from body parsing through; the handler answers 413.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class BodyTimedOut(DomainError, HTTPException):
    """A request body that stopped arriving, or arrives slower than the minimum rate (HTTP 408, code
    `body_timeout`); the connection is closed."""

    kind, code = "body_timeout", "body_timeout"

    @property
    def public_message(self) -> str:
        return str(self.detail)

    def __init__(self, detail: str):
        super().__init__(408, detail, headers={"Connection": "close"})


class BodyTimeout(HTTPMiddleware):
    """A request body must arrive within `timeout_s()` seconds of the app's first read, plus one second
    for every `min_rate()` bytes received (Apache mod_reqtimeout's `body=20,MinRate=500`).

    Without it a client holding a connection open with one byte every few seconds holds what the request
    reserved (an upload's queue place) for as long as it likes: 100 such uploads filled the ingestion
    queue for every tenant. A read still waiting at the deadline is abandoned and the request ends with
    408 `body_timeout`. Only the body is timed: once its last part has arrived, later reads (a streaming
    answer watching for the client leaving) pass through untouched.
    """

    def __init__(self, app: ASGIApp, timeout_s: Callable[[], float], min_rate: Callable[[], int]):
        super().__init__(app)
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        received = 0
        complete = False

        async def timed_receive() -> Message:
            nonlocal deadline, received, complete
            if complete:
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.timeout_s()
            rate = self.min_rate()
            remaining = deadline + (received / rate if rate > 0 else 0.0) - loop.time()
            try:
                # A timeout scope, not asyncio.wait_for: on Python 3.11 that runs each read in a new task.
                async with asyncio.timeout(max(remaining, 0.0)):
                    message = await receive()
            except TimeoutError:
                log.warning(
                    "request body too slow: %d bytes of %s %s before its deadline; closing",
                    received,
                    scope["method"],
                    scope["path"],
                )
                raise BodyTimedOut(
                    f"the request body did not arrive in time (limits.body_timeout_s, plus one second per "
                    f"limits.body_min_rate_bytes_s bytes received): {received} bytes received"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            else:  # http.disconnect: nothing more will arrive
                complete = True
            return message

        await self.app(scope, timed_receive, send)


# The upload route: multipart, bounded by the documents API itself (limits.max_request_mb, max_files).
_UPLOAD_PATH = re.compile(r"/v1/collections/[^/]+/documents/?")


def is_upload(scope: Scope) -> bool:
    """True for a document upload (POST multipart to /v1/collections/{c}/documents)."""
    return scope.get("method") == "POST" and bool(_UPLOAD_PATH.fullmatch(scope.get("path", "")))
