"""Errors the services raise for requests that cannot be served as asked. No FastAPI here: each declares
its kind (`ingest.errors.STATUS` maps kinds to HTTP statuses) and a stable `code`."""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ingest.errors import DomainError

M = TypeVar("M", bound=BaseModel)


class ServiceError(DomainError):
    """Base: `code` is the stable machine-readable error code clients see; a subclass without a kind is
    a 500."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(ServiceError):
    """A request value that is not acceptable (HTTP 400)."""

    kind = "invalid"
    code = "invalid_request"


class PayloadTooLarge(ServiceError):
    """A body, file, question or upload over its limit; the message names the limit (HTTP 413)."""

    kind = "too_large"
    code = "payload_too_large"


class Unavailable(ServiceError):
    """A dependency is down or the server is at capacity: try again later (HTTP 503, Retry-After)."""

    kind = "unavailable"
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unauthenticated(ServiceError):
    """No credentials, or credentials that are unknown, revoked or expired (HTTP 401)."""

    kind = "unauthenticated"
    code = "unauthenticated"


class Forbidden(ServiceError):
    """Known credentials whose role does not allow the request (HTTP 403)."""

    kind = "forbidden"
    code = "forbidden"


class RateLimited(ServiceError):
    """A key over its requests or tokens per minute (HTTP 429, Retry-After in seconds)."""

    kind = "rate_limited"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = max(1, retry_after_s)


def parse_model(data: Any, model: type[M], *, what: str, shape: str, code: str) -> M:
    """`model` from a dict or YAML/JSON text (an admin's spec file or body): InvalidInput (400, `code`)
    naming the first bad field, or saying that `what` is not YAML or not `shape`."""
    if isinstance(data, str | bytes):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{what} is not YAML: {exc}", code=code) from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} is {shape}", code=code)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first.get("ctx", {}).get("error") or first["msg"])
        raise InvalidInput(f"{what}: {where + ': ' if where else ''}{message}", code=code) from exc
