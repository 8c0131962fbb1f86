"""SQLAlchemy engines for the relational database: URL normalisation and per-backend connection setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

# How long a SQLite writer waits for another connection's write lock before failing ("database is locked").
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A PostgreSQL server that does not answer fails a connection attempt (and so `ping`) after this long.
POSTGRES_CONNECT_TIMEOUT_S = 5


def normalise_url(url: str | URL) -> URL:
    """Parse `url`; `postgresql://` and `postgres://` get the psycopg 3 driver (the one installed)."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked(url: str | URL) -> str:
    """`url` as text with its password replaced by `***` (for logs and CLI output)."""
    return sa.make_url(url).render_as_string(hide_password=True)


def make_engine(url: str | URL) -> Engine:
    """A sync Engine for `url`; SQLite files get WAL, synchronous=FULL and a busy timeout.

    The parent directory of a SQLite file is created, so a fresh data dir works out of the box.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed)
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    # pre_ping: a pooled connection the server dropped (restart, failover) is replaced, not handed out.
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The sqlite3 module's implicit BEGIN is skipped before DDL (so a migration would not be atomic)
        # and is DEFERRED; turn it off and issue our own in `_on_begin`.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers run beside the writer (and other processes, e.g. the history store, share the
        # file). FULL: a commit is on disk before it returns, so an acknowledged upload survives power loss.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two writers (threads or processes) queue on the busy
        # timeout instead of one failing on a read-to-write lock upgrade (e.g. a migration's inspect-then-
        # create). The cost, readers waiting for a short write, is small next to that.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
