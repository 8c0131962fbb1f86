"""Every error leaves the API as JSON `{"error": {"code", "message", "request_id"}}` with the right status.

Clients get a stable `code`, a short message and the request id (the `X-Request-ID` header of the same
response); what names internals (the LLM's base URL, an exception's repr) goes to the server log only,
under the same request id. `public_error` is the one mapping, used by the exception handlers and by the
SSE encoder for errors mid-stream.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.logging_setup import current_request_id
from ingest.errors import DomainError, PublicError, describe

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON error object, with the current request's id."""
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return {"error": body}


def public_error(exc: BaseException) -> PublicError:
    """The status, code and message a client gets for `exc`: what the error declares where it is raised
    (`ingest.errors.describe`); what it does not get (an upstream error's message, an unexpected error's
    traceback) is logged here."""
    if isinstance(exc, APIError):
        return PublicError(exc.status, exc.code, exc.message)
    described = describe(exc)
    if described is not None:
        if described.status >= 502:  # an upstream failure: its message names internals, for the log
            log.warning("%s: %s", described.code, exc)
        return described
    if isinstance(exc, StarletteHTTPException):
        code = getattr(exc, "code", None) or "http_error"
        return PublicError(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)
    log.error("unhandled error", exc_info=exc)
    return PublicError(500, "internal_error", "internal server error")


def error_response(exc: BaseException) -> JSONResponse:
    """`public_error(exc)` as a JSON response."""
    error = public_error(exc)
    body = error_body(error.code, error.message)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'][1:]) or 'request'}: {first['msg']}"
        return JSONResponse(error_body("invalid_request", message, details=details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Normally unreached: app.api.middleware.RequestContext answers unhandled errors first.
        return error_response(exc)
