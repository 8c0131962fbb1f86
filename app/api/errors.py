"""Every error leaves the API as JSON `{"error": {"code", "message"}}` with the right status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.llm.base import LLMError
from app.prompting import PromptError, UnknownPrompt
from app.retrieval.retriever import RetrievalError
from app.services.chat_service import ConversationNotFound
from app.services.document_service import DocumentNotFound, JobNotFound, UnsupportedUpload, UploadTooLarge
from ingest.filters import FilterError
from ingest.vector_index import CollectionNotFound, InvalidCollectionName

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


# exception type -> (status, code)
_MAPPED: list[tuple[type[Exception], int, str]] = [
    (CollectionNotFound, 404, "collection_not_found"),
    (DocumentNotFound, 404, "document_not_found"),
    (JobNotFound, 404, "job_not_found"),
    (ConversationNotFound, 404, "conversation_not_found"),
    (UnknownPrompt, 400, "unknown_prompt"),
    (PromptError, 400, "prompt_error"),
    (InvalidCollectionName, 400, "invalid_collection_name"),
    (UploadTooLarge, 413, "upload_too_large"),
    (UnsupportedUpload, 415, "unsupported_media_type"),
    (LLMError, 502, "llm_unavailable"),
    (FilterError, 400, "invalid_filter"),
    (RetrievalError, 400, "invalid_retrieval"),
]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    for exc_type, status, code in _MAPPED:

        async def _mapped(_: Request, exc: Exception, status: int = status, code: str = code) -> JSONResponse:
            return JSONResponse(error_body(code, str(exc)), status_code=status)

        app.add_exception_handler(exc_type, _mapped)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
