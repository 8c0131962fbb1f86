"""Ingestion job records in a relational database (SQLAlchemy Core): a SQLite file or PostgreSQL.

The schema is Alembic's (`app.db.migrate`), brought up to date when the store is built. Every call runs
its statements in a worker thread (`asyncio.to_thread`), so the event loop never waits on the database,
and each write commits before the call returns (SQLite: synchronous=FULL).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from app.db import make_engine, migrate
from app.db.tables import ingest_job_files as files_t
from app.db.tables import ingest_jobs as jobs_t
from app.jobs.base import (
    FINAL_FILE_STATUSES,
    UNFINISHED_JOB_STATUSES,
    Job,
    JobFile,
    JobStateConflict,
    JobStoreUnavailable,
    check_file_status,
    check_job_status,
)

T = TypeVar("T")

_FILE_FIELDS = ("document_id", "filename", "stored_path", "status", "error", "chunks", "original_filename")
# One statement reads a job with its files (an outer join: a job may have none), so the two always come
# from one snapshot, even on PostgreSQL where each statement of a transaction sees the latest commits.
_JOBS_WITH_FILES = (
    sa.select(jobs_t, *(files_t.c[name].label(f"file_{name}") for name in _FILE_FIELDS))
    .select_from(jobs_t.outerjoin(files_t, files_t.c.job_id == jobs_t.c.job_id))
    .order_by(jobs_t.c.created_at, jobs_t.c.job_id, files_t.c.position)
)


class SQLJobStore:
    """`JobStore` on a SQLAlchemy database URL (`sqlite:///...`, `postgresql://...`)."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = make_engine(url)
        # Synchronous on purpose: built once at start-up, before the server takes requests.
        migrate(self._engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    async def create(self, job: Job) -> None:
        """See `JobStore.create`."""
        job_row = {
            "job_id": job.job_id,
            "collection": job.collection,
            "status": job.status,
            "metadata_json": json.dumps(job.metadata, ensure_ascii=False),
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "owner": job.owner,
            "worker": job.worker,
            "attempts": job.attempts,
            "heartbeat_at": job.heartbeat_at,
        }
        file_rows = [
            {"job_id": job.job_id, "position": i, **{name: getattr(f, name) for name in _FILE_FIELDS}}
            for i, f in enumerate(job.files)
        ]

        def _create(conn: Connection) -> None:
            try:
                conn.execute(sa.insert(jobs_t), job_row)
            except sa.exc.IntegrityError as exc:
                raise ValueError(f"job {job.job_id} already exists") from exc
            if file_rows:
                conn.execute(sa.insert(files_t), file_rows)

        await self._write(_create)

    async def get(self, job_id: str) -> Job | None:
        """See `JobStore.get`."""
        jobs = await self._read(_JOBS_WITH_FILES.where(jobs_t.c.job_id == job_id))
        return jobs[0] if jobs else None

    async def update_file(
        self, job_id: str, document_id: str, status: str, error: str | None = None, chunks: int = 0
    ) -> None:
        """See `JobStore.update_file`."""
        check_file_status(status)
        # Each file is its own row, updated in place: concurrent updates of different files never meet.
        change = (
            sa.update(files_t)
            .where(files_t.c.job_id == job_id, files_t.c.document_id == document_id)
            .values(status=status, error=error, chunks=chunks)
        )

        def _update(conn: Connection) -> None:
            updated = conn.execute(change).rowcount
            _touch(conn, job_id)  # raises KeyError for an unknown job first: the clearer message
            if updated == 0:
                raise KeyError(f"job {job_id} has no file with document_id {document_id!r}")

        await self._write(_update)

    async def set_status(self, job_id: str, status: str, *, only_from: Iterable[str] | None = None) -> bool:
        """See `JobStore.set_status`."""
        check_job_status(status)
        allowed = None if only_from is None else sorted(only_from)

        def _set(conn: Connection) -> bool:
            if allowed is None:
                _touch(conn, job_id, status)
                return True
            change = (
                sa.update(jobs_t)
                .where(jobs_t.c.job_id == job_id, jobs_t.c.status.in_(allowed))
                .values(status=status, updated_at=time.time())
            )
            if conn.execute(change).rowcount:
                return True
            _must_exist(conn, job_id)
            return False

        return await self._write(_set)

    async def claim(self, job_id: str, worker: str, stale_before: float) -> Job | None:
        """See `JobStore.claim`: one conditional UPDATE, so the database decides between two claimers."""
        now = time.time()
        claimable = sa.or_(
            jobs_t.c.status == "queued",
            sa.and_(
                jobs_t.c.status == "running",
                sa.or_(
                    jobs_t.c.heartbeat_at.is_(None),
                    jobs_t.c.heartbeat_at < stale_before,
                    jobs_t.c.worker == worker,  # its own job again (after a job-store outage)
                ),
            ),
        )
        change = (
            sa.update(jobs_t)
            .where(jobs_t.c.job_id == job_id, claimable)
            .values(
                status="running",
                worker=worker,
                attempts=jobs_t.c.attempts + 1,
                heartbeat_at=now,
                updated_at=now,
            )
        )
        if not await self._write(lambda conn: conn.execute(change).rowcount):
            return None
        return await self.get(job_id)

    async def heartbeat(self, job_id: str, worker: str) -> str | None:
        """See `JobStore.heartbeat`."""
        change = (
            sa.update(jobs_t)
            .where(jobs_t.c.job_id == job_id, jobs_t.c.worker == worker)
            .values(heartbeat_at=time.time())
        )

        def _beat(conn: Connection) -> str | None:
            if not conn.execute(change).rowcount:
                return None
            return conn.execute(sa.select(jobs_t.c.status).where(jobs_t.c.job_id == job_id)).scalar_one()

        return await self._write(_beat)

    async def list_stale(self, stale_before: float) -> list[Job]:
        """See `JobStore.list_stale`."""
        stale = sa.or_(
            sa.and_(
                jobs_t.c.status == "running",
                sa.or_(jobs_t.c.heartbeat_at.is_(None), jobs_t.c.heartbeat_at < stale_before),
            ),
            sa.and_(jobs_t.c.status == "queued", jobs_t.c.updated_at < stale_before),
        )
        return await self._read(_JOBS_WITH_FILES.where(stale))

    async def cancel(self, job_id: str) -> Job:
        """See `JobStore.cancel`."""

        def _cancel(conn: Connection) -> None:
            status = _must_exist(conn, job_id)
            if status not in UNFINISHED_JOB_STATUSES:
                raise JobStateConflict(f"job {job_id} is already {status}")
            conn.execute(
                sa.update(files_t)
                .where(files_t.c.job_id == job_id, files_t.c.status.not_in(sorted(FINAL_FILE_STATUSES)))
                .values(status="cancelled", error="cancelled")
            )
            _touch(conn, job_id, "cancelled")

        await self._write(_cancel)
        job = await self.get(job_id)
        assert job is not None
        return job

    async def retry(self, job_id: str) -> Job:
        """See `JobStore.retry`."""

        def _retry(conn: Connection) -> None:
            status = _must_exist(conn, job_id)
            if status in UNFINISHED_JOB_STATUSES:
                raise JobStateConflict(f"job {job_id} is still {status}")
            redo = conn.execute(
                sa.update(files_t)
                .where(files_t.c.job_id == job_id, files_t.c.status.in_(["failed", "cancelled"]))
                .values(status="queued", error=None, chunks=0)
            ).rowcount
            if not redo:
                raise JobStateConflict(f"job {job_id} has no failed or cancelled file to retry")
            conn.execute(
                sa.update(jobs_t)
                .where(jobs_t.c.job_id == job_id)
                .values(status="queued", worker="", heartbeat_at=None, updated_at=time.time())
            )

        await self._write(_retry)
        job = await self.get(job_id)
        assert job is not None
        return job

    async def list_unfinished(self) -> list[Job]:
        """See `JobStore.list_unfinished`."""
        return await self._read(_JOBS_WITH_FILES.where(jobs_t.c.status.in_(sorted(UNFINISHED_JOB_STATUSES))))

    async def count_queued(self, collection_prefix: str | None) -> int:
        """See `JobStore.count_queued`."""
        collection = jobs_t.c.collection
        # Store names hold no LIKE wildcards but "_", which only ever stands for itself here: escaped.
        match = (
            ~collection.contains(".", autoescape=True)
            if collection_prefix is None
            else collection.startswith(collection_prefix, autoescape=True)
        )
        query = sa.select(sa.func.count()).select_from(jobs_t).where((jobs_t.c.status == "queued") & match)

        def _count() -> int:
            with _unavailable_on_connection_errors(), self._engine.connect() as conn:
                return int(conn.execute(query).scalar_one())

        return await asyncio.to_thread(_count)

    async def delete_finished(self, updated_before: float) -> list[str]:
        """See `JobStore.delete_finished`."""
        finished = sa.and_(
            jobs_t.c.status.not_in(sorted(UNFINISHED_JOB_STATUSES)), jobs_t.c.updated_at < updated_before
        )

        def _delete(conn: Connection) -> list[str]:
            ids = [row.job_id for row in conn.execute(sa.select(jobs_t.c.job_id).where(finished))]
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                conn.execute(sa.delete(files_t).where(files_t.c.job_id.in_(batch)))
                conn.execute(sa.delete(jobs_t).where(jobs_t.c.job_id.in_(batch)))
            return ids

        return await self._write(_delete)

    async def ping(self) -> bool:
        """See `JobStore.ping`."""

        def _ping() -> None:
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        try:
            await asyncio.to_thread(_ping)
        except Exception:  # any failure (driver, network, pool) means "not healthy", never an error
            return False
        return True

    async def aclose(self) -> None:
        """See `JobStore.aclose`."""
        await asyncio.to_thread(self._engine.dispose)

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one transaction in a worker thread; committed before the await returns."""

        def _transaction() -> T:
            with _unavailable_on_connection_errors(), self._engine.begin() as conn:
                return fn(conn)

        return await asyncio.to_thread(_transaction)

    async def _read(self, query: sa.Select[Any]) -> list[Job]:
        def _query() -> list[Job]:
            with _unavailable_on_connection_errors(), self._engine.connect() as conn:
                return _jobs_from_rows(conn.execute(query).all())

        return await asyncio.to_thread(_query)


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    """The driver's 'cannot reach the database' errors as JobStoreUnavailable (other errors, such as
    an integrity error, pass unchanged)."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise JobStoreUnavailable(f"job store unreachable: {type(cause).__name__}") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise JobStoreUnavailable("job store connection lost") from exc
        raise


def _touch(conn: Connection, job_id: str, status: str | None = None) -> None:
    """Bump updated_at (and set status when given); KeyError for an unknown job."""
    values: dict[str, Any] = {"updated_at": time.time()}
    if status is not None:
        values["status"] = status
    if conn.execute(sa.update(jobs_t).where(jobs_t.c.job_id == job_id).values(values)).rowcount == 0:
        raise KeyError(f"unknown job {job_id}")


def _must_exist(conn: Connection, job_id: str) -> str:
    """The job's status; KeyError for an unknown job."""
    status = conn.execute(sa.select(jobs_t.c.status).where(jobs_t.c.job_id == job_id)).scalar_one_or_none()
    if status is None:
        raise KeyError(f"unknown job {job_id}")
    return str(status)


def _jobs_from_rows(rows: Sequence[Row[Any]]) -> list[Job]:
    """Group `_JOBS_WITH_FILES` rows (one per file, in order) into jobs."""
    jobs: dict[str, tuple[Row[Any], list[JobFile]]] = {}
    for row in rows:
        _, job_files = jobs.setdefault(row.job_id, (row, []))
        if row.file_document_id is not None:  # None: the outer join's row for a job without files
            job_files.append(JobFile(**{name: row._mapping[f"file_{name}"] for name in _FILE_FIELDS}))
    return [
        Job(
            job_id=row.job_id,
            collection=row.collection,
            status=row.status,
            files=job_files,
            metadata=json.loads(row.metadata_json),
            created_at=row.created_at,
            updated_at=row.updated_at,
            owner=row.owner,
            worker=row.worker,
            attempts=row.attempts,
            heartbeat_at=row.heartbeat_at,
        )
        for row, job_files in jobs.values()
    ]
