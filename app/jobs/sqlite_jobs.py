"""Ingestion job records in a SQLite file: the one-machine default.

Shares the database file with the history store (separate tables). Every write commits with
`synchronous=FULL` before returning, so an acknowledged upload survives a crash or power loss.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from app.history.sqlite_history import SQLiteConnection
from app.jobs.base import UNFINISHED_JOB_STATUSES, Job, JobFile, check_file_status, check_job_status

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_jobs (
    job_id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ingest_jobs_by_status ON ingest_jobs (status, created_at);
CREATE TABLE IF NOT EXISTS ingest_job_files (
    job_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    filename TEXT NOT NULL,
    stored_path TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    chunks INTEGER NOT NULL,
    PRIMARY KEY (job_id, document_id)
);
"""

_JOB_COLUMNS = "job_id, collection, status, metadata_json, created_at, updated_at, owner"
_FILE_COLUMNS = "document_id, filename, stored_path, status, error, chunks"
_UNFINISHED = tuple(sorted(UNFINISHED_JOB_STATUSES))


class SQLiteJobStore:
    """`JobStore` in a SQLite file."""

    def __init__(self, path: Path) -> None:
        self._db = SQLiteConnection(path, synchronous="FULL")
        # Synchronous on purpose: built once at start-up, before the server takes requests.
        self._db.create_schema(_SCHEMA)
        # Databases made before jobs had an owner gain the column (their jobs belong to any instance).
        self._db.add_column_if_missing("ingest_jobs", "owner", "TEXT NOT NULL DEFAULT ''")

    @property
    def path(self) -> Path:
        return self._db.path

    async def create(self, job: Job) -> None:
        """See `JobStore.create`."""
        job_row = (
            job.job_id,
            job.collection,
            job.status,
            json.dumps(job.metadata, ensure_ascii=False),
            job.created_at,
            job.updated_at,
            job.owner,
        )
        file_rows = [
            (job.job_id, f.document_id, i, f.filename, f.stored_path, f.status, f.error, f.chunks)
            for i, f in enumerate(job.files)
        ]

        def _create(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO ingest_jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", job_row
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"job {job.job_id} already exists") from exc
            conn.executemany(
                "INSERT INTO ingest_job_files (job_id, document_id, position, filename, stored_path, status,"
                " error, chunks) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                file_rows,
            )

        await self._db.transaction(_create)

    async def get(self, job_id: str) -> Job | None:
        """See `JobStore.get`."""
        return await self._db.transaction(lambda conn: _load_job(conn, job_id), write=False)

    async def update_file(
        self, job_id: str, document_id: str, status: str, error: str | None = None, chunks: int = 0
    ) -> None:
        """See `JobStore.update_file`."""
        check_file_status(status)

        def _update(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE ingest_job_files SET status = ?, error = ?, chunks = ?"
                " WHERE job_id = ? AND document_id = ?",
                (status, error, chunks, job_id, document_id),
            )
            if cursor.rowcount == 0:
                _touch(conn, job_id)  # raises KeyError for an unknown job first: the clearer message
                raise KeyError(f"job {job_id} has no file with document_id {document_id!r}")
            _touch(conn, job_id)

        await self._db.transaction(_update)

    async def set_status(self, job_id: str, status: str) -> None:
        """See `JobStore.set_status`."""
        check_job_status(status)
        await self._db.transaction(lambda conn: _touch(conn, job_id, status))

    async def list_unfinished(self) -> list[Job]:
        """See `JobStore.list_unfinished`."""

        def _list(conn: sqlite3.Connection) -> list[Job]:
            ids = [
                job_id
                for (job_id,) in conn.execute(
                    "SELECT job_id FROM ingest_jobs WHERE status IN (?, ?) ORDER BY created_at, job_id",
                    _UNFINISHED,
                )
            ]
            return [job for job in (_load_job(conn, job_id) for job_id in ids) if job is not None]

        return await self._db.transaction(_list, write=False)

    async def ping(self) -> bool:
        """See `JobStore.ping`."""
        return await self._db.ping()

    async def aclose(self) -> None:
        """See `JobStore.aclose`."""
        await self._db.aclose()


def _touch(conn: sqlite3.Connection, job_id: str, status: str | None = None) -> None:
    """Bump updated_at (and set status when given); KeyError for an unknown job."""
    cursor = conn.execute(
        "UPDATE ingest_jobs SET updated_at = ?, status = COALESCE(?, status) WHERE job_id = ?",
        (time.time(), status, job_id),
    )
    if cursor.rowcount == 0:
        raise KeyError(f"unknown job {job_id}")


def _load_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM ingest_jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    files = [
        JobFile(*file_row)
        for file_row in conn.execute(
            f"SELECT {_FILE_COLUMNS} FROM ingest_job_files WHERE job_id = ? ORDER BY position", (job_id,)
        )
    ]
    fields: dict[str, Any] = dict(zip(_JOB_COLUMNS.split(", "), row, strict=True))
    fields["metadata"] = json.loads(fields.pop("metadata_json"))
    return Job(files=files, **fields)
