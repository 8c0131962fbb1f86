"""Document upload (async ingestion jobs), listing, lookup and deletion."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from app.api.deps import DocumentServiceDep
from app.api.documents.multipart import iter_parts
from app.api.documents.schemas import DocumentList, DocumentOut, JobAccepted, JobOut
from app.api.guards import Reader, Writer

router = APIRouter(tags=["documents"])

# The body is parsed as it streams in (app/api/documents/multipart.py), not by FastAPI's form
# handling, so the request body is described here for the OpenAPI schema.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more documents (txt, md, html, pdf, docx).",
                        },
                        "metadata": {
                            "type": "string",
                            "description": "JSON object added to every document's metadata: flat values "
                            "(string, number, boolean), keys of letters, digits, '_', '-', '.'.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/v1/collections/{collection}/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"description": "Invalid collection name, metadata or multipart body"},
        403: {"description": "The key's role cannot upload (writer or admin needed)"},
        404: {"description": "A collection the key may not touch"},
        413: {"description": "A file, the request or the number of files over its limit"},
        408: {"description": "The body stopped arriving (limits.body_timeout_s, body_min_rate_bytes_s)"},
        415: {"description": "Unsupported or mislabelled type"},
        429: {"description": "The key's or tenant's share of uploads and queued jobs is taken (Retry-After)"},
        503: {"description": "Ingestion queue full or job store unavailable (Retry-After)"},
    },
)
async def upload_documents(
    collection: str, request: Request, service: DocumentServiceDep, principal: Writer
) -> JobAccepted:
    """Upload documents into a collection (created on first upload). The files are streamed to disk
    under the upload limits and stored before the 202 answer, then ingested in the background: poll
    `GET /v1/jobs/{job_id}`."""
    length = request.headers.get("content-length")
    declared = int(length) if length and length.isdigit() else None
    parts = iter_parts(request.stream(), request.headers.get("content-type"))
    job = await service.upload(collection, parts, principal=principal, declared_bytes=declared)
    return JobAccepted(
        job_id=job.job_id,
        documents=[{"document_id": f.document_id, "filename": f.filename} for f in job.files],
    )


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, service: DocumentServiceDep, principal: Reader) -> JobOut:
    """Status of an ingestion job: queued, running, succeeded, failed, partial or cancelled, per file,
    with the worker running it and how many times a worker took it."""
    return JobOut.from_job(await service.get_job(job_id, principal=principal))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={404: {"description": "No such job"}, 409: {"description": "The job already finished"}},
)
async def cancel_job(job_id: str, service: DocumentServiceDep, principal: Writer) -> JobOut:
    """Cancel a queued or running job: files not yet ingested become `cancelled` (files already
    ingested stay); the worker stops at its next boundary."""
    return JobOut.from_job(await service.cancel_job(job_id, principal=principal))


@router.post(
    "/v1/jobs/{job_id}/retry",
    response_model=JobOut,
    responses={
        404: {"description": "No such job"},
        409: {"description": "The job is still running, or no file failed"},
    },
)
async def retry_job(job_id: str, service: DocumentServiceDep, principal: Writer) -> JobOut:
    """Queue a finished job's failed and cancelled files again (their stored uploads are kept until
    the job succeeds)."""
    return JobOut.from_job(await service.retry_job(job_id, principal=principal))


@router.get("/v1/collections/{collection}/documents", response_model=DocumentList)
async def list_documents(
    collection: str,
    service: DocumentServiceDep,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, description="At most limits.max_list_offset.")] = 0,
) -> DocumentList:
    """Documents of a collection, a page at a time."""
    records, total = await service.list_documents(collection, limit, offset, principal=principal)
    return DocumentList(
        documents=[DocumentOut(**r.to_dict()) for r in records], total=total, limit=limit, offset=offset
    )


@router.get("/v1/collections/{collection}/documents/{document_id}", response_model=DocumentOut)
async def get_document(
    collection: str, document_id: str, service: DocumentServiceDep, principal: Reader
) -> DocumentOut:
    """One document's record."""
    return DocumentOut(**(await service.get_document(collection, document_id, principal=principal)).to_dict())


@router.delete("/v1/collections/{collection}/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(
    collection: str, document_id: str, service: DocumentServiceDep, principal: Writer
) -> None:
    """Delete a document and all its chunks."""
    await service.delete_document(collection, document_id, principal=principal)
