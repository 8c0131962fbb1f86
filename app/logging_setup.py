"""Logging for the server: the app's own loggers at INFO by default, one line per event carrying the
request id, as text or as one JSON object per line (`ragserver serve --log-format json`).

The request id lives in a context variable that `app.api.middleware.RequestContext` sets for each
request; a filter on the handler copies it onto every record (uvicorn's access log included, which is
written while the response starts, inside the request's context).

Secrets stay out: the access log shows the values of secret-named query parameters (`?api_key=`,
`?token=`...) as `[redacted]`, and no logger here is ever given a request's headers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote_plus

request_id_var: ContextVar[str | None] = ContextVar("ragserver_request_id", default=None)

# Loggers that get the configured level; everything else (third-party libraries) stays at WARNING.
APP_LOGGERS = ("app", "ingest", "evals", "uvicorn", "uvicorn.error", "uvicorn.access")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Marks the handler this module installed, so configuring again replaces it instead of adding one.
_OWNED = "_ragserver_handler"
# Query parameters whose value the access log never shows (names compared lower-cased): the API only
# reads keys from `Authorization`, but clients put them in URLs anyway, and the 401 is logged with it.
SECRET_QUERY_PARAMS = frozenset({"api_key", "apikey", "token", "access_token", "key"})
REDACTED = "[redacted]"


def current_request_id() -> str | None:
    """The id of the request being served in this context (None outside a request)."""
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or "-") on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"  # type: ignore[attr-defined]
        return True


def redact_query(target: str) -> str:
    """`target` (a path with its query string) with the value of every secret-named query parameter
    replaced by `[redacted]`; everything else is kept byte for byte, so the line still reads as sent."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        if eq and unquote_plus(name).lower() in SECRET_QUERY_PARAMS:
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return f"{path}?{'&'.join(pairs)}"


class AccessLogRedactor(logging.Filter):
    """Redacts secret query parameters in the path of uvicorn's access records. Its args are
    (client, method, path with query, http_version, status); both formats build the line from them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            if isinstance(path, str):
                record.args = (client, method, redact_query(path), http_version, status)
        return True


def install_access_log_redaction() -> None:
    """Put `AccessLogRedactor` on the `uvicorn.access` logger itself (once): a logger's filters run
    before any handler sees the record, so uvicorn's own handlers and a test runner's are covered too."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogRedactor) for f in access.filters):
        access.addFilter(AccessLogRedactor())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id (and exception, if any);
    uvicorn's access lines also as fields (client, method, path, status)."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == "-" else request_id,
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            entry.update(client=client, method=method, path=path, http_version=http_version, status=status)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str | int = "INFO", fmt: str = "text") -> None:
    """Send every log record to stderr in `fmt` ("text" or "json"), the app's and uvicorn's loggers at
    `level`. Idempotent: calling it again replaces the handler it installed."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    setattr(handler, _OWNED, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OWNED, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    level_no = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(level_no, int):
        raise ValueError(f"unknown log level {level!r}")
    install_access_log_redaction()
    for name in APP_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level_no)
        if name.startswith("uvicorn"):
            # uvicorn's own handlers would print a second, differently formatted line.
            logger.handlers.clear()
            logger.propagate = True


def ensure_logging(level: str | int, fmt: str) -> None:
    """`configure_logging`, unless the process already has logging set up (a root handler: the CLI's,
    a test runner's): under `uvicorn app.main:app` the app's INFO logs would otherwise go nowhere. The
    access log's redaction is installed either way."""
    if not logging.getLogger().handlers:
        configure_logging(level, fmt)
    install_access_log_redaction()
