"""The BM25 index's derived term table: one SQLite file per collection (WAL, one transaction per
write batch) holding each chunk's analysed terms, and a generation counter that every change bumps
(a snapshot records the generation it indexed). Texts and metadata stay in the vector index."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

Row = tuple[str, str, str]  # chunk_id, terms, analyzer signature

_SCHEMA = """
CREATE TABLE IF NOT EXISTS terms (
    chunk_id TEXT PRIMARY KEY, terms TEXT NOT NULL, signature TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_UPSERT = "INSERT OR REPLACE INTO terms VALUES (?, ?, ?)"


class TermTable:
    """Analysed terms of one collection's chunks."""

    def __init__(self, path: Path):
        self.path = path

    def apply(self, upserted: list[Row], deleted_ids: list[str]) -> None:
        """One write batch, atomically."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM terms WHERE chunk_id = ?", [(i,) for i in deleted_ids])
            db.executemany(_UPSERT, upserted)
            _bump(db)
            db.execute("COMMIT")

    def replace_all(self, rows: Iterable[Row]) -> int:
        """Make the table exactly `rows`, atomically. `rows` is consumed inside the write transaction,
        so a concurrent `apply` waits and then lands on top of the new contents."""
        count = 0
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM terms")
            for batch in _batched(rows, 1000):
                db.executemany(_UPSERT, batch)
                count += len(batch)
            _bump(db)
            db.execute("COMMIT")
        return count

    def read_all(self) -> tuple[int, list[tuple[str, str]]]:
        """(generation, [(chunk_id, terms)] by chunk id) from one read snapshot."""
        with self._db() as db:
            db.execute("BEGIN")
            generation = _generation(db)
            rows = db.execute("SELECT chunk_id, terms FROM terms ORDER BY chunk_id").fetchall()
            db.execute("COMMIT")
        return generation, rows

    def generation(self) -> int:
        with self._db() as db:
            return _generation(db)

    def count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM terms").fetchone()[0])

    def ids(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT chunk_id FROM terms")]

    def ids_not_analyzed_by(self, signature: str) -> list[str]:
        """Chunk ids whose terms came from another analyzer."""
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT chunk_id FROM terms WHERE signature != ?", (signature,))]

    def set_terms(self, updates: list[tuple[str, str, str]]) -> None:
        """[(terms, signature, chunk_id)]: re-analysed rows (not a content change: no generation bump)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("UPDATE terms SET terms = ?, signature = ? WHERE chunk_id = ?", updates)
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()


def _generation(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def _bump(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO state VALUES ('generation', '1') "
        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


def _batched(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
