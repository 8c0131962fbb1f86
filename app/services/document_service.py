"""Uploads and ingestion jobs: store first, then ingest in the background through the same pipeline
as the CLI. Unfinished jobs (a crash, a restart) are picked up again at start-up."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.jobs.base import Job, JobFile, JobStore, final_status
from app.services.metrics import Metrics
from app.settings import Settings
from ingest.loaders import LoadError, load_bytes, sniff_kind
from ingest.pipeline import IngestPipeline
from ingest.types import LoadFailure, SourceDocument
from ingest.vector_index import CollectionNotFound, DocumentRecord, VectorIndex, validate_collection_name

log = logging.getLogger(__name__)


class UnsupportedUpload(ValueError):
    """An upload whose type is unsupported or does not match its content (HTTP 415)."""


class UploadTooLarge(ValueError):
    """An upload over the size limit (HTTP 413)."""


class DocumentNotFound(LookupError):
    """No such document in the collection."""


class JobNotFound(LookupError):
    """No such job."""


@dataclass
class IncomingFile:
    filename: str
    data: bytes


def upload_document_id(collection: str, filename: str) -> str:
    """An upload's identity is (collection, file name): uploading the same name again replaces it."""
    return hashlib.sha1(f"upload:{collection}:{filename}".encode()).hexdigest()[:20]


def _safe_name(filename: str) -> str:
    name = Path(filename.replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] or "upload"


class DocumentService:
    """Accepts uploads, runs ingestion jobs one at a time, and lists/deletes documents."""

    def __init__(
        self,
        settings: Settings,
        store: VectorIndex,
        pipeline: IngestPipeline,
        jobs: JobStore,
        metrics: Metrics,
    ):
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.jobs = jobs
        self.metrics = metrics
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.server.max_upload_mb * 1024 * 1024)

    async def start(self) -> None:
        """Start the job worker and re-queue jobs a previous process left unfinished."""
        self._worker = asyncio.create_task(self._work(), name="ingest-worker")
        me = self.settings.instance_id
        for job in await self.jobs.list_unfinished():
            if job.owner and job.owner != me:
                # Another replica accepted it and holds its uploads; it resumes the job itself.
                log.info("leaving unfinished job %s to its owner %s", job.job_id, job.owner)
                continue
            log.info("resuming ingestion job %s", job.job_id)
            await self._queue.put(job.job_id)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass

    async def wait_idle(self) -> None:
        """Wait until every queued job has finished (tests, benchmarks)."""
        await self._queue.join()

    def check_upload(self, filename: str, data: bytes) -> None:
        """Raises UploadTooLarge / UnsupportedUpload for a file that must be refused."""
        if len(data) > self.max_upload_bytes:
            raise UploadTooLarge(
                f"{filename}: {len(data)} bytes is over the {self.settings.server.max_upload_mb:g} MB limit"
            )
        try:
            kind = sniff_kind(data, filename)
        except LoadError as exc:
            raise UnsupportedUpload(f"{filename}: {exc}") from exc
        if kind == "jsonl":
            raise UnsupportedUpload(
                f"{filename}: .jsonl corpora are ingested with the CLI (`ragserver ingest`)"
            )

    async def submit(self, collection: str, files: list[IncomingFile], metadata: dict[str, Any]) -> Job:
        """Store the files durably, record a job, queue it; returns the job (HTTP 202)."""
        validate_collection_name(collection)
        for f in files:
            self.check_upload(f.filename, f.data)
        job_id = uuid.uuid4().hex
        job_dir = self.settings.uploads_dir / job_id
        job_files: list[JobFile] = []
        seen: set[str] = set()
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        for i, f in enumerate(files):
            doc_id = upload_document_id(collection, f.filename)
            if doc_id in seen:  # the same name twice in one upload: the last copy wins
                job_files = [jf for jf in job_files if jf.document_id != doc_id]
            seen.add(doc_id)
            path = job_dir / f"{i:04d}_{_safe_name(f.filename)}"
            await asyncio.to_thread(_write_durably, path, f.data)
            job_files.append(JobFile(document_id=doc_id, filename=f.filename, stored_path=str(path)))
        now = time.time()
        job = Job(
            job_id=job_id,
            collection=collection,
            status="queued",
            files=job_files,
            metadata=metadata,
            created_at=now,
            updated_at=now,
            owner=self.settings.instance_id,
        )
        await self.jobs.create(job)
        await self._queue.put(job_id)
        return job

    async def get_job(self, job_id: str) -> Job:
        job = await self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return job

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run(job_id)
            except Exception:
                log.exception("ingestion job %s crashed", job_id)
                try:
                    await self.jobs.set_status(job_id, "failed")
                except Exception:
                    log.exception("could not mark job %s failed", job_id)
            finally:
                self._queue.task_done()

    async def _run(self, job_id: str) -> None:
        job = await self.jobs.get(job_id)
        if job is None or job.is_finished:
            return
        await self.jobs.set_status(job_id, "running")
        loop = asyncio.get_running_loop()
        todo = [f for f in job.files if not f.is_final]
        by_doc = {f.document_id: f for f in todo}

        def on_document(doc: str, status: str, error: str | None) -> None:
            file = by_doc.get(doc) or next((f for f in todo if f.stored_path == doc), None)
            if file is None:
                return
            final = {"added": "succeeded", "replaced": "succeeded", "skipped": "skipped"}.get(
                status, "failed"
            )
            self.metrics.documents.labels(status=status).inc()
            record = self.store.get_documents(job.collection, [file.document_id]).get(file.document_id)
            chunks = record.chunks if record is not None and final != "failed" else 0
            # Called from the ingestion thread: hand the async update to the event loop and wait.
            asyncio.run_coroutine_threadsafe(
                self.jobs.update_file(job_id, file.document_id, final, error, chunks), loop
            ).result()

        def items() -> Iterator[SourceDocument | LoadFailure]:
            for f in todo:
                try:
                    data = Path(f.stored_path).read_bytes()
                    doc = load_bytes(
                        data,
                        f.filename,
                        doc_id=f.document_id,
                        source=f.filename,
                        metadata={**job.metadata, "filename": f.filename},
                    )
                except (LoadError, OSError) as exc:
                    yield LoadFailure(source=f.stored_path, error=str(exc))
                    continue
                yield doc

        await asyncio.to_thread(self.pipeline.ingest, items(), job.collection, on_document=on_document)
        done = await self.jobs.get(job_id)
        assert done is not None
        status = final_status(done.files)
        await self.jobs.set_status(job_id, status)
        self.metrics.jobs.labels(status=status).inc()
        if status == "succeeded":
            await asyncio.to_thread(shutil.rmtree, self.settings.uploads_dir / job_id, True)

    # -- documents -------------------------------------------------------------------------------

    def _existing(self, collection: str) -> str:
        validate_collection_name(collection)
        if not self.store.has_collection(collection):
            raise CollectionNotFound(f"collection {collection!r} not found")
        return collection

    async def list_documents(
        self, collection: str, limit: int, offset: int
    ) -> tuple[list[DocumentRecord], int]:
        self._existing(collection)
        records = await asyncio.to_thread(self.store.list_documents, collection, limit=limit, offset=offset)
        total = await asyncio.to_thread(self.store.count_documents, collection)
        return records, total

    async def get_document(self, collection: str, document_id: str) -> DocumentRecord:
        self._existing(collection)
        found = await asyncio.to_thread(self.store.get_documents, collection, [document_id])
        if document_id not in found:
            raise DocumentNotFound(f"document {document_id!r} not found in collection {collection!r}")
        return found[document_id]

    async def delete_document(self, collection: str, document_id: str) -> None:
        await self.get_document(collection, document_id)
        await asyncio.to_thread(self.pipeline.delete, collection, [document_id])


def _write_durably(path: Path, data: bytes) -> None:
    """Write then fsync, so an accepted upload survives a crash right after the 202."""
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
