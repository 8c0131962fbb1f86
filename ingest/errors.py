"""What a request that fails is told, declared where the error is raised.

Every error a request can end with is a `DomainError`: its `kind` says what went wrong in words an HTTP
status maps to (`STATUS`), and its `code` is the stable machine-readable code clients see. The API maps
kinds to statuses without importing the modules that raise (`app/api/errors.py`), and the audit log records
the same status and code (`describe`). It lives here, in the bottom layer, so that every layer (ingest,
the services, the LLM adapters) can declare its errors without importing the web layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# kind -> HTTP status
STATUS: dict[str, int] = {
    "invalid": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "body_timeout": 408,
    "conflict": 409,
    "too_large": 413,
    "unsupported": 415,
    "over_limit": 422,
    "rate_limited": 429,
    "upstream_failed": 502,
    "unavailable": 503,
    "timeout": 504,
}


class DomainError(Exception):
    """Base (or mixin beside a builtin such as LookupError) of every error a request can end with.

    Subclasses set `kind` (a key of STATUS) and `code`; an instance may carry its own `code`. The message
    is what the client reads, unless `public_message` says otherwise (an upstream error's message, which
    names internals, goes to the log only)."""

    kind: ClassVar[str] = ""
    code: str = "error"

    @property
    def public_message(self) -> str:
        return str(self)


@dataclass(frozen=True)
class PublicError:
    """What a client is told about an error."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None


def describe(exc: BaseException) -> PublicError | None:
    """The status, code, message and headers a client gets for `exc`; None for an error that declares no
    kind (an unexpected one: a 500 whose details stay in the log)."""
    kind = getattr(exc, "kind", None)
    if not isinstance(exc, DomainError) or kind not in STATUS:
        return None
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if kind == "unauthenticated":
        headers["WWW-Authenticate"] = "Bearer"
    extra = getattr(exc, "headers", None)  # an HTTP exception's own (Connection: close)
    if isinstance(extra, dict):
        headers.update(extra)
    return PublicError(STATUS[kind], exc.code, exc.public_message, headers or None)
