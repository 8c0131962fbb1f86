"""Every error leaves the API as JSON `{"error": {"code", "message", "request_id"}}` with the right status.

Clients get a stable `code`, a short message and the request id (the `X-Request-ID` header of the same
response); what names internals (the LLM's base URL, an exception's repr) goes to the server log only,
under the same request id. `public_error` is the one mapping, used by the exception handlers and by the
SSE encoder for errors mid-stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth.admin import KeyNotFound
from app.jobs.base import JobStateConflict
from app.llm.base import LLMError
from app.logging_setup import current_request_id
from app.prompting import PromptError, UnknownPrompt
from app.retrieval.retriever import RetrievalError
from app.services.chat_service import ConversationNotFound
from app.services.collection_versions import VersionConflict
from app.services.document_service import DocumentNotFound, JobNotFound, UnsupportedUpload, UploadTooLarge
from app.services.errors import (
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from app.services.limits import OverLimit, RequestTimedOut
from app.services.responses import ResponseNotFound
from ingest.filters import FilterError
from ingest.vector_index import CollectionNotFound, InvalidCollectionName, InvalidTenantName

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


# exception type -> (status, code)
_MAPPED: list[tuple[type[Exception], int, str]] = [
    (CollectionNotFound, 404, "collection_not_found"),
    (DocumentNotFound, 404, "document_not_found"),
    (JobNotFound, 404, "job_not_found"),
    (JobStateConflict, 409, "job_state_conflict"),
    (VersionConflict, 409, "version_conflict"),
    (ResponseNotFound, 404, "response_not_found"),
    (ConversationNotFound, 404, "conversation_not_found"),
    (KeyNotFound, 404, "key_not_found"),
    (UnknownPrompt, 400, "unknown_prompt"),
    (PromptError, 400, "prompt_error"),
    (InvalidCollectionName, 400, "invalid_collection_name"),
    (InvalidTenantName, 400, "invalid_tenant_name"),
    (UploadTooLarge, 413, "upload_too_large"),
    (UnsupportedUpload, 415, "unsupported_media_type"),
    (FilterError, 400, "invalid_filter"),
    (RetrievalError, 400, "invalid_retrieval"),
]

# ServiceError subclass -> status (the first match wins; any other ServiceError is a 500).
_SERVICE_STATUS: list[tuple[type[ServiceError], int]] = [
    (InvalidInput, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (RateLimited, 429),
    (PayloadTooLarge, 413),
    (OverLimit, 422),
    (Unavailable, 503),
    (RequestTimedOut, 504),
]


@dataclass(frozen=True)
class PublicError:
    """What a client is told about an error."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None


def public_error(exc: BaseException) -> PublicError:
    """The status, code and message a client gets for `exc`; what it does not get is logged here."""
    if isinstance(exc, APIError):
        return PublicError(exc.status, exc.code, exc.message)
    if isinstance(exc, LLMError):
        # Its message names the provider, its base URL and the upstream error: for the log only.
        log.warning("LLM call failed: %s", exc)
        if exc.timed_out:
            return PublicError(504, "llm_timeout", "the language model did not answer in time")
        return PublicError(502, "llm_unavailable", "the language model is unavailable")
    if isinstance(exc, ServiceError):
        status = next((code for kind, code in _SERVICE_STATUS if isinstance(exc, kind)), 500)
        headers = None
        if isinstance(exc, Unavailable | RateLimited):
            headers = {"Retry-After": str(exc.retry_after_s)}
        elif isinstance(exc, Unauthenticated):
            headers = {"WWW-Authenticate": "Bearer"}
        return PublicError(status, exc.code, exc.message, headers)
    for exc_type, status, code in _MAPPED:
        if isinstance(exc, exc_type):
            return PublicError(status, code, str(exc))
    if isinstance(exc, StarletteHTTPException):  # a body limit or timeout raised while a service read it
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

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(LLMError)
    async def _llm_error(_: Request, exc: LLMError) -> JSONResponse:
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

    async def _mapped(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for exc_type, _status, _code in _MAPPED:
        app.add_exception_handler(exc_type, _mapped)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Normally unreached: app.api.middleware.RequestContext answers unhandled errors first.
        return error_response(exc)
