"""Conversation history in a SQLite file: the one-machine default, no service to run.

`SQLiteConnection` is the thread-offloading wrapper around one sqlite3 connection that it uses.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from app.history.base import HistoryStoreError, Turn

T = TypeVar("T")


class SQLiteConnection:
    """One stdlib sqlite3 connection shared by async callers.

    Every call runs in a worker thread (`asyncio.to_thread`) so the event loop never blocks on disk, and
    under a lock because one sqlite3 connection cannot run two transactions at once. Several
    processes may open the same file: WAL lets readers run beside the writer, and `BEGIN IMMEDIATE`
    takes the write lock up front so two writers wait on each other (busy timeout) instead of
    deadlocking on a read-to-write upgrade.
    """

    def __init__(self, path: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of the module's implicit ones.
        self._conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._lock = threading.Lock()
        self.path = path

    def _transaction_sync(self, fn: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        """Run `fn` in one transaction on the calling thread; committed before returning."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    async def transaction(self, fn: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        """Run `fn` in one transaction in a worker thread; committed before the await returns. A
        database error is a `HistoryStoreError`."""
        try:
            return await asyncio.to_thread(self._transaction_sync, fn, write)
        except sqlite3.Error as exc:
            raise HistoryStoreError(f"sqlite history store {self.path}: {exc!r}") from exc

    def create_schema(self, script: str) -> None:
        """Run idempotent DDL (`CREATE ... IF NOT EXISTS`) in one transaction, synchronously.

        Meant for start-up; `executescript` would commit any open transaction, so the script brings its own.
        """
        with self._lock:
            self._conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")

    def add_column_if_missing(self, table: str, column: str, declaration: str) -> None:
        """Add `column` to a table made by an older schema (start-up, synchronous; names are ours)."""

        def _add(conn: sqlite3.Connection) -> None:
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

        self._transaction_sync(_add)

    async def ping(self) -> bool:
        """True when the file answers a trivial query."""
        try:
            await self.transaction(lambda conn: conn.execute("SELECT 1").fetchone(), write=False)
        except HistoryStoreError:
            return False
        return True

    async def aclose(self) -> None:
        """Close the connection once the running transaction (if any) has finished."""

        def _close() -> None:
            with self._lock:
                self._conn.close()

        await asyncio.to_thread(_close)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_expires_at ON conversations (expires_at);
CREATE TABLE IF NOT EXISTS conversation_turns (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    turn_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversation_turns_by_conversation ON conversation_turns (conversation_id, seq);
"""


class SQLiteHistoryStore:
    """`HistoryStore` in a SQLite file (survives restarts; several processes may share the file).

    Expiry is checked on every read (an expired conversation reads as None even before it is removed);
    expired rows are deleted lazily, by the read that finds them and by a sweep on each append.
    """

    def __init__(self, path: Path, ttl_s: int, max_turns: int) -> None:
        if ttl_s < 1 or max_turns < 1:
            raise ValueError("ttl_s and max_turns must be >= 1")
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self._db = SQLiteConnection(path, synchronous="NORMAL")
        # Synchronous on purpose: built once at start-up, before the server takes requests.
        self._db.create_schema(_SCHEMA)

    @property
    def path(self) -> Path:
        return self._db.path

    async def append(self, conversation_id: str, turns: list[Turn]) -> None:
        """See `HistoryStore.append`."""
        if not turns:
            return
        rows = [(conversation_id, turn.to_json()) for turn in turns]

        def _append(conn: sqlite3.Connection) -> None:
            now = time.time()
            _sweep_expired(conn, now)
            conn.execute(
                "INSERT INTO conversations (conversation_id, expires_at) VALUES (?, ?) "
                "ON CONFLICT (conversation_id) DO UPDATE SET expires_at = excluded.expires_at",
                (conversation_id, now + self.ttl_s),
            )
            conn.executemany(
                "INSERT INTO conversation_turns (conversation_id, turn_json) VALUES (?, ?)", rows
            )
            conn.execute(
                "DELETE FROM conversation_turns WHERE conversation_id = ? AND seq NOT IN ("
                " SELECT seq FROM conversation_turns WHERE conversation_id = ? ORDER BY seq DESC LIMIT ?)",
                (conversation_id, conversation_id, self.max_turns),
            )

        await self._db.transaction(_append)

    async def get(self, conversation_id: str) -> list[Turn] | None:
        """See `HistoryStore.get`."""

        def _get(conn: sqlite3.Connection) -> list[str] | None:
            now = time.time()
            row = conn.execute(
                "SELECT expires_at FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                return None
            if row[0] <= now:
                _delete(conn, conversation_id)
                return None
            cursor = conn.execute(
                "SELECT turn_json FROM conversation_turns WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            )
            return [raw for (raw,) in cursor]

        # A write transaction because the read may delete an expired conversation.
        raws = await self._db.transaction(_get)
        return None if raws is None else [Turn.from_json(raw) for raw in raws]

    async def delete(self, conversation_id: str) -> bool:
        """See `HistoryStore.delete`."""

        def _delete_live(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT expires_at FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            _delete(conn, conversation_id)
            # An expired conversation already counts as gone, as with Redis.
            return row is not None and row[0] > time.time()

        return await self._db.transaction(_delete_live)

    async def ping(self) -> bool:
        """See `HistoryStore.ping`."""
        return await self._db.ping()

    async def aclose(self) -> None:
        """See `HistoryStore.aclose`."""
        await self._db.aclose()


def _delete(conn: sqlite3.Connection, conversation_id: str) -> None:
    conn.execute("DELETE FROM conversation_turns WHERE conversation_id = ?", (conversation_id,))
    conn.execute("DELETE FROM conversations WHERE conversation_id = ?", (conversation_id,))


def _sweep_expired(conn: sqlite3.Connection, now: float) -> None:
    # Bounded by the expires_at index; keeps the file from growing with abandoned conversations.
    conn.execute(
        "DELETE FROM conversation_turns WHERE conversation_id IN ("
        " SELECT conversation_id FROM conversations WHERE expires_at <= ?)",
        (now,),
    )
    conn.execute("DELETE FROM conversations WHERE expires_at <= ?", (now,))
