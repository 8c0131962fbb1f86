"""Document upload (async ingestion jobs), listing, lookup and deletion."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status

from app.api.deps import DocumentServiceDep
from app.api.documents.schemas import DocumentList, DocumentOut, JobAccepted, JobOut
from app.api.errors import APIError
from app.services.document_service import IncomingFile, UploadTooLarge

router = APIRouter(tags=["documents"])


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """Read an upload, refusing (413) as soon as it passes the limit instead of after."""
    chunks: list[bytes] = []
    size = 0
    while block := await upload.read(1024 * 1024):
        size += len(block)
        if size > limit:
            raise UploadTooLarge(f"{upload.filename}: over the {limit / 1024 / 1024:g} MB limit")
        chunks.append(block)
    return b"".join(chunks)


@router.post(
    "/v1/collections/{collection}/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses={
        413: {"description": "File too large"},
        415: {"description": "Unsupported or mislabelled type"},
    },
)
async def upload_documents(
    collection: str,
    request: Request,
    service: DocumentServiceDep,
    files: Annotated[list[UploadFile], File(description="One or more documents (txt, md, html, pdf, docx).")],
    metadata: Annotated[
        str | None, Form(description="JSON object added to every document's metadata.")
    ] = None,
) -> JobAccepted:
    """Upload documents into a collection (created on first upload). The files are stored before the
    202 answer, then ingested in the background: poll `GET /v1/jobs/{job_id}`."""
    length = request.headers.get("content-length")
    if (
        length
        and length.isdigit()
        and int(length) > service.max_upload_bytes * max(1, len(files)) + 1024 * 1024
    ):
        raise UploadTooLarge(f"request of {int(length)} bytes is over the upload limit")
    extra: dict[str, Any] = {}
    if metadata:
        try:
            extra = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise APIError(400, "invalid_metadata", f"metadata is not valid JSON: {exc.msg}") from exc
        if not isinstance(extra, dict):
            raise APIError(400, "invalid_metadata", "metadata must be a JSON object")
    if not files:
        raise APIError(400, "no_files", "upload at least one file in the 'files' field")
    incoming = [
        IncomingFile(filename=f.filename or "upload", data=await _read_limited(f, service.max_upload_bytes))
        for f in files
    ]
    job = await service.submit(collection, incoming, extra)
    return JobAccepted(
        job_id=job.job_id,
        documents=[{"document_id": f.document_id, "filename": f.filename} for f in job.files],
    )


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, service: DocumentServiceDep) -> JobOut:
    """Status of an ingestion job: queued, running, succeeded, failed or partial, per file."""
    return JobOut.from_job(await service.get_job(job_id))


@router.get("/v1/collections/{collection}/documents", response_model=DocumentList)
async def list_documents(
    collection: str,
    service: DocumentServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DocumentList:
    """Documents of a collection, a page at a time."""
    records, total = await service.list_documents(collection, limit, offset)
    return DocumentList(
        documents=[DocumentOut(**r.to_dict()) for r in records], total=total, limit=limit, offset=offset
    )


@router.get("/v1/collections/{collection}/documents/{document_id}", response_model=DocumentOut)
async def get_document(collection: str, document_id: str, service: DocumentServiceDep) -> DocumentOut:
    """One document's record."""
    return DocumentOut(**(await service.get_document(collection, document_id)).to_dict())


@router.delete("/v1/collections/{collection}/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(collection: str, document_id: str, service: DocumentServiceDep) -> None:
    """Delete a document and all its chunks."""
    await service.delete_document(collection, document_id)
