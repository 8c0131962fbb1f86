"""Ingestion job records: `JobFile`, `Job`, `final_status` and the `JobStore` protocol.

An upload becomes a job with one `JobFile` per uploaded file. The store is the job's durable record:
a job is written before the upload is acknowledged, and jobs still queued or running at start-up are
resumed (`list_unfinished`), so an accepted upload is never lost and no job stays stuck.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ingest.errors import DomainError

FILE_STATUSES = ("queued", "running", "succeeded", "skipped", "failed", "cancelled")
FINAL_FILE_STATUSES = frozenset({"succeeded", "skipped", "failed", "cancelled"})
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "partial", "cancelled")
UNFINISHED_JOB_STATUSES = frozenset({"queued", "running"})


def check_file_status(status: str) -> str:
    """Return `status`, or raise ValueError when it is not a `JobFile` status."""
    if status not in FILE_STATUSES:
        raise ValueError(f"file status must be one of {FILE_STATUSES}, got {status!r}")
    return status


def check_job_status(status: str) -> str:
    """Return `status`, or raise ValueError when it is not a `Job` status."""
    if status not in JOB_STATUSES:
        raise ValueError(f"job status must be one of {JOB_STATUSES}, got {status!r}")
    return status


class JobStateConflict(DomainError):
    """The job is not in a state that allows the change (cancel a finished job, retry a running one)."""

    kind, code = "conflict", "job_state_conflict"


class JobStoreUnavailable(Exception):
    """The job store's backend cannot be reached (connection refused or lost, timed out). Nothing
    was written; the same call may succeed once the backend is back."""


@dataclass
class JobFile:
    """One uploaded file of a job; `chunks` is how many chunks it produced once ingested.

    `filename` is the name as shown (cleaned: no control or bidi characters, length capped);
    `original_filename` is the name exactly as uploaded, kept for the record (None: the same).
    """

    document_id: str
    filename: str
    stored_path: str
    status: str = "queued"
    error: str | None = None
    chunks: int = 0
    original_filename: str | None = None

    def __post_init__(self) -> None:
        check_file_status(self.status)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_FILE_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobFile:
        return cls(
            document_id=data["document_id"],
            filename=data["filename"],
            stored_path=data["stored_path"],
            status=data.get("status", "queued"),
            error=data.get("error"),
            chunks=int(data.get("chunks", 0)),
            original_filename=data.get("original_filename"),
        )


@dataclass
class Job:
    """An ingestion job: files to load into `collection`, with per-file and overall status."""

    job_id: str
    collection: str
    status: str
    files: list[JobFile]
    metadata: dict[str, Any]
    created_at: float
    updated_at: float
    # The server instance that accepted the job and holds its uploads: after a restart it resumes the
    # job; other instances sharing the job database (PostgreSQL) leave it alone ("" = any instance).
    owner: str = ""
    # The worker process running it ("host:pid"; "" before any claimed it), how many times it was
    # claimed, and its last heartbeat (Unix time).
    worker: str = ""
    attempts: int = 0
    heartbeat_at: float | None = None

    def __post_init__(self) -> None:
        check_job_status(self.status)
        ids = [f.document_id for f in self.files]
        # Files are addressed by document_id (update_file), so two files with one id would be ambiguous;
        # the upload layer must mark a duplicate upload 'skipped' under its own id or drop it.
        if len(ids) != len(set(ids)):
            raise ValueError(f"job {self.job_id}: document_ids must be unique within a job")

    @property
    def is_finished(self) -> bool:
        return self.status not in UNFINISHED_JOB_STATUSES

    @property
    def progress(self) -> dict[str, int]:
        """`{"done": files in a final state, "total": files}`."""
        return {"done": sum(f.is_final for f in self.files), "total": len(self.files)}

    def file(self, document_id: str) -> JobFile:
        """The file with this document_id; KeyError when the job has none."""
        for f in self.files:
            if f.document_id == document_id:
                return f
        raise KeyError(f"job {self.job_id} has no file with document_id {document_id!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view for the API (and storage); includes the derived `progress`."""
        return {
            "job_id": self.job_id,
            "collection": self.collection,
            "status": self.status,
            "files": [f.to_dict() for f in self.files],
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "owner": self.owner,
            "worker": self.worker,
            "attempts": self.attempts,
            "heartbeat_at": self.heartbeat_at,
            "progress": self.progress,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Inverse of `to_dict` (`progress` is derived, so it is ignored)."""
        return cls(
            job_id=data["job_id"],
            collection=data["collection"],
            status=data["status"],
            files=[JobFile.from_dict(f) for f in data.get("files", [])],
            metadata=data.get("metadata") or {},
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            owner=str(data.get("owner") or ""),
            worker=str(data.get("worker") or ""),
            attempts=int(data.get("attempts") or 0),
            heartbeat_at=data.get("heartbeat_at"),
        )


def final_status(files: Iterable[JobFile]) -> str:
    """The job status once every file is final: all succeeded/skipped -> 'succeeded', all failed ->
    'failed', a mix -> 'partial', any cancelled -> 'cancelled'. A job without files has nothing left to do:
    'succeeded'.

    Raises ValueError while a file is still queued or running: calling it then is a bug that would mark
    a job finished too early (and it would never be resumed).
    """
    statuses = [f.status for f in files]
    pending = [s for s in statuses if s not in FINAL_FILE_STATUSES]
    if pending:
        raise ValueError(f"final_status needs every file final; {len(pending)} still {sorted(set(pending))}")
    if "cancelled" in statuses:
        return "cancelled"
    if statuses and all(s == "failed" for s in statuses):
        return "failed"
    if all(s in ("succeeded", "skipped") for s in statuses):
        return "succeeded"
    return "partial"


@runtime_checkable
class JobStore(Protocol):
    """Durable job records: every write is persisted before the call returns. A call that cannot
    reach the backend raises JobStoreUnavailable (nothing written), never a driver's own error."""

    async def create(self, job: Job) -> None:
        """Store a new job; ValueError when `job.job_id` already exists."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job, files in their original order; None when unknown."""
        ...

    async def update_file(
        self, job_id: str, document_id: str, status: str, error: str | None = None, chunks: int = 0
    ) -> None:
        """Set one file's status/error/chunks and bump `updated_at`; KeyError for an unknown job or file.

        Concurrent updates of different files of one job never overwrite each other.
        """
        ...

    async def set_status(self, job_id: str, status: str, *, only_from: Iterable[str] | None = None) -> bool:
        """Set the job status and bump `updated_at`; KeyError for an unknown job. With `only_from`, only
        while the job's status is one of those (False, and nothing changed, otherwise)."""
        ...

    async def claim(self, job_id: str, worker: str, stale_before: float) -> Job | None:
        """Atomically make `worker` the job's runner: when it is queued, running with a heartbeat older
        than `stale_before` (its worker is gone), or running under `worker` itself. Sets status
        running, the worker, the heartbeat and attempts + 1, and returns the job; None when it is
        unknown, finished, or held by a live worker. Two workers claiming one job at once: exactly one
        gets it."""
        ...

    async def heartbeat(self, job_id: str, worker: str) -> str | None:
        """Refresh the heartbeat of `worker`'s job and return the job's status (a worker stops when it
        reads 'cancelled'); None when the job is gone or another worker has claimed it since."""
        ...

    async def list_stale(self, stale_before: float) -> list[Job]:
        """Unfinished jobs nobody is working on: running with a heartbeat older than `stale_before`,
        or queued and not updated since then (the reaper queues them again)."""
        ...

    async def cancel(self, job_id: str) -> Job:
        """Cancel an unfinished job: its files not yet final become 'cancelled', the job 'cancelled'.
        KeyError for an unknown job, JobStateConflict for a finished one."""
        ...

    async def retry(self, job_id: str) -> Job:
        """Queue a finished job's failed and cancelled files again (the job becomes 'queued').
        KeyError for an unknown job, JobStateConflict while it runs or when no file failed."""
        ...

    async def list_unfinished(self) -> list[Job]:
        """Jobs whose status is queued or running, oldest first (resumed at start-up)."""
        ...

    async def count_queued(self, collection_prefix: str | None) -> int:
        """How many jobs are queued for collections whose store name starts with `collection_prefix`
        (`"<tenant>."`); None counts the jobs of bare names (the default tenant's)."""
        ...

    async def delete_finished(self, updated_before: float) -> list[str]:
        """Delete finished jobs (succeeded, failed, partial) last updated before `updated_before`
        (a Unix time) with their files; returns their ids. Unfinished jobs are never deleted."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers (for health checks); never raises."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...
