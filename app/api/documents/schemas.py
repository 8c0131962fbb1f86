"""Request/response shapes of the documents API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class AcceptedDocument(BaseModel):
    document_id: str
    filename: str


class JobAccepted(BaseModel):
    job_id: str
    documents: list[AcceptedDocument]


class JobFileOut(BaseModel):
    document_id: str
    filename: str
    status: str
    error: str | None = None
    chunks: int = 0


class JobOut(BaseModel):
    job_id: str
    collection: str
    status: str
    files: list[JobFileOut]
    progress: dict[str, int]
    metadata: dict[str, Any] = {}
    created_at: float
    updated_at: float


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
