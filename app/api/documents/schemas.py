"""Request/response shapes of the documents API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from app.jobs.base import Job


class AcceptedDocument(BaseModel):
    document_id: str
    filename: str


class JobAccepted(BaseModel):
    job_id: str
    documents: list[AcceptedDocument]


class JobFileOut(BaseModel):
    """One file of a job (its `stored_path` stays on the server). `filename` is the name as shown
    (control and bidi characters removed, length capped); `original_filename` is the name exactly as
    uploaded when it differs."""

    document_id: str
    filename: str
    original_filename: str | None = None
    status: str
    error: str | None = None
    chunks: int = 0


class WorkerOut(BaseModel):
    host: str
    pid: int


class JobOut(BaseModel):
    """The status answer of an ingestion job (`GET /v1/jobs/{job_id}`)."""

    job_id: str
    collection: str
    status: str
    files: list[JobFileOut]
    progress: dict[str, int]
    metadata: dict[str, Any] = {}
    created_at: float
    updated_at: float
    # The worker process running (or that last ran) it, and how many times a worker claimed it (more
    # than one: a worker died or stopped and another took over).
    worker: WorkerOut | None = None
    attempts: int = 0

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        """The answer for `job`, from its JSON view (which has `progress`). Internal fields of that view
        (`owner`, each file's `stored_path`) are not fields here, so validation leaves them out."""
        from ingest.vector_index import split_store_name

        view = job.to_dict()
        view["collection"] = split_store_name(job.collection)[1]  # as its tenant names it
        host, _, pid = job.worker.rpartition(":")
        view["worker"] = {"host": host, "pid": int(pid)} if host and pid.isdigit() else None
        return cls.model_validate(view)


class DocumentOut(BaseModel):
    document_id: str
    source: str
    title: str
    content_hash: str
    chunks: int
    ingested_at: float
    metadata: dict[str, Any]


class DocumentList(BaseModel):
    documents: list[DocumentOut]
    total: int
    limit: int
    offset: int
