"""Uploads and documents: an upload is stored first (every limit checked as its bytes arrive), recorded
as a job and handed to the job runner (`app/jobs/runner.py`), which ingests it in the background;
documents are listed, read and deleted on the version serving their collection. Documents read on this
machine (`ragserver ingest`, eval corpora) go through `ingest_local`, on the same versions, limits and
audit.

What this service guarantees (docs/SECURITY.md lists the limits):

- an upload streams into `<data_dir>/uploads/<job_id>/` with every limit checked as the bytes arrive
  (`app.services.uploads`); a refused upload, or one the job store cannot record (503), leaves nothing;
- the queue is bounded (`limits.max_queued_jobs`): beyond it an upload answers 503 with Retry-After
  before reading its body; each tenant and key has its share of it (429);
- every write is audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.auth.audit import AuditEntry, AuditLog, AuditTarget
from app.auth.principal import Principal
from app.jobs.base import Job, JobFile, JobStore, JobStoreUnavailable
from app.services.errors import InvalidInput, RateLimited, Unavailable
from app.services.uploads import (
    PartData,
    PartEnd,
    PartEvent,
    PartStart,
    UnsupportedUpload,
    UploadLimits,
    UploadTooLarge,
    receive_upload,
)
from app.settings import Settings
from app.storage import LocalStorage, UploadStorage
from ingest.errors import DomainError
from ingest.loaders import iter_documents
from ingest.pipeline import IngestReport
from ingest.safety import LoadLimits
from ingest.types import LoadFailure, SourceDocument
from ingest.vector_index import (
    DEFAULT_TENANT,
    CollectionNotFound,
    DocumentRecord,
    VectorIndex,
    split_store_name,
    validate_store_name,
)

if TYPE_CHECKING:
    from app.jobs.runner import JobRunner
    from app.services.collection_versions import CollectionVersions

__all__ = [
    "DocumentNotFound",
    "DocumentService",
    "IncomingFile",
    "JobNotFound",
    "UnsupportedUpload",
    "UploadTooLarge",
    "upload_document_id",
]

log = logging.getLogger(__name__)

# Seconds a client is told to wait: the queue is full, or the job store is unreachable.
RETRY_AFTER_S = 5


class DocumentNotFound(DomainError, LookupError):
    """No such document in the collection."""

    kind, code = "not_found", "document_not_found"


class JobNotFound(DomainError, LookupError):
    """No such job."""

    kind, code = "not_found", "job_not_found"


@dataclass
class IncomingFile:
    """A file already in memory (programmatic uploads; the API streams instead)."""

    filename: str
    data: bytes


def upload_document_id(key: bytes, store: str, filename: str) -> str:
    """An upload's identity is (tenant, collection, file name as uploaded): the same name again replaces
    it. Keyed with the instance's `document_id_key`, so ids differ across tenants and cannot be guessed."""
    message = f"upload\0{store}\0{filename}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:24]


def legacy_upload_document_id(collection: str, filename: str) -> str:
    """The id uploads had before tenants (default tenant only): a re-upload of such a document under
    the same name keeps replacing it."""
    return hashlib.sha1(f"upload:{collection}:{filename}".encode()).hexdigest()[:20]


@asynccontextmanager
async def _store_errors_as_unavailable() -> AsyncIterator[None]:
    try:
        yield
    except JobStoreUnavailable as exc:
        raise Unavailable(
            f"the job store is unavailable ({exc}); try again", retry_after_s=RETRY_AFTER_S
        ) from exc


class DocumentService:
    """Accepts uploads as jobs for the runner, and lists, reads and deletes documents."""

    def __init__(
        self,
        settings: Settings,
        store: VectorIndex,
        versions: CollectionVersions,
        jobs: JobStore,
        runner: JobRunner,
        *,
        audit: AuditLog | None = None,
        document_id_key: bytes = b"",
        storage: UploadStorage | None = None,
    ):
        self.settings = settings
        self.store = store
        # Blue/green: reads and writes go to the version serving the collection when they start.
        self.versions = versions
        self.jobs = jobs
        # Runs the jobs accepted here (in this process, or on `ragserver worker` processes).
        self.runner = runner
        self.audit = audit
        self.document_id_key = document_id_key
        self.storage: UploadStorage = storage or LocalStorage(settings.uploads_dir)
        self.upload_limits = UploadLimits.from_settings(settings)
        self.load_limits = LoadLimits.from_settings(settings.limits)
        # Uploads being received, by job id, with who sends them: they hold a queue slot (counted against
        # their tenant's and key's caps too), and their folders are not orphans.
        self._receiving: dict[str, Principal] = {}

    def arriving(self) -> Collection[str]:
        """Ids of the uploads still being received (the runner's sweep leaves their folders)."""
        return self._receiving.keys()

    @property
    def max_upload_bytes(self) -> int:
        return self.upload_limits.max_file_bytes

    # -- uploads -----------------------------------------------------------------------------------

    async def _reserve_slot(self, job_id: str, principal: Principal) -> None:
        """Count upload `job_id` as arriving, or refuse it before its body is read: 429 when its key or
        tenant holds its share (`limits.max_uploads_per_key`, `max_uploads_per_tenant` arriving at once,
        `max_queued_jobs_per_tenant` queued or arriving), 503 when the whole queue is full
        (`limits.max_queued_jobs`). A tenant's own caps are below the server's, so one tenant's flood
        (slow bodies, or many jobs) queues or fails only its own uploads."""
        limits = self.settings.limits
        mine = [p for p in self._receiving.values() if p.tenant == principal.tenant]
        if principal.key_id is not None:
            by_key = sum(1 for p in mine if p.key_id == principal.key_id)
            if by_key >= limits.max_uploads_per_key:
                raise self._over_share(f"this key has {by_key} uploads arriving (limits.max_uploads_per_key)")
        if len(mine) >= limits.max_uploads_per_tenant:
            raise self._over_share(
                f"this tenant has {len(mine)} uploads arriving (limits.max_uploads_per_tenant)"
            )
        # Counted before the awaits below, so concurrent uploads cannot all pass the same check.
        self._receiving[job_id] = principal
        try:
            prefix = None if principal.tenant == DEFAULT_TENANT else f"{principal.tenant}."
            async with _store_errors_as_unavailable():
                tenant_queued = await self.jobs.count_queued(prefix)
            if tenant_queued + len(mine) >= limits.max_queued_jobs_per_tenant:
                raise self._over_share(
                    f"this tenant has {tenant_queued + len(mine)} jobs queued or arriving "
                    "(limits.max_queued_jobs_per_tenant)"
                )
            queued = await self.runner.waiting()
            waiting = queued + len(self._receiving) - 1
            if waiting >= limits.max_queued_jobs:
                raise Unavailable(
                    f"the ingestion queue is full ({waiting} jobs waiting, limits.max_queued_jobs); "
                    "try again later",
                    retry_after_s=RETRY_AFTER_S,
                    code="queue_full",
                )
        except BaseException:
            self._receiving.pop(job_id, None)
            raise

    @staticmethod
    def _over_share(why: str) -> RateLimited:
        return RateLimited(
            f"{why}; try again once they are ingested", retry_after_s=RETRY_AFTER_S, code="too_many_uploads"
        )

    async def upload(
        self,
        collection: str,
        parts: AsyncIterable[PartEvent],
        *,
        principal: Principal,
        declared_bytes: int | None = None,
    ) -> Job:
        """Receive a streamed upload into `principal`'s collection as a new job and queue it (HTTP 202).

        Checked before a byte of the body is read: the collection name (and the key's collection list),
        the declared size against limits.max_request_mb, and the queue's room. Then the parts are
        received under every limit (`receive_upload`), and the job is recorded. Any refusal deletes
        what was written. Audited as `document.upload`.
        """
        async with self._audited(principal, "document.upload", collection) as target:
            job = await self._upload(principal.collection(collection), parts, declared_bytes, principal)
            target.object_id = job.job_id
            target.detail = ",".join(f.document_id for f in job.files)[:500]
            return job

    async def _upload(
        self, store: str, parts: AsyncIterable[PartEvent], declared_bytes: int | None, principal: Principal
    ) -> Job:
        validate_store_name(store)
        if declared_bytes is not None and declared_bytes > self.upload_limits.max_request_bytes:
            raise self.upload_limits.request_too_large()
        job_id = uuid.uuid4().hex
        job_dir = self.storage.staging_root / job_id
        await self._reserve_slot(job_id, principal)
        try:
            received = await receive_upload(parts, job_dir, self.upload_limits)
            ids = await self._document_ids(store, [s.original_filename for s in received.files])
            job_files: dict[str, JobFile] = {}
            for staged in received.files:
                doc_id = ids[staged.original_filename]
                earlier = job_files.pop(doc_id, None)
                if earlier is not None:  # the same name twice in one upload: the last copy wins
                    await asyncio.to_thread(Path(earlier.stored_path).unlink, True)
                original = staged.original_filename if staged.original_filename != staged.filename else None
                job_files[doc_id] = JobFile(
                    document_id=doc_id,
                    filename=staged.filename,
                    stored_path=str(staged.path),
                    original_filename=original,
                )
            kept = list(job_files.values())
            keys = await self.storage.keep(job_id, job_dir, [Path(f.stored_path) for f in kept])
            for f, key in zip(kept, keys, strict=True):
                f.stored_path = key
            now = time.time()
            job = Job(
                job_id=job_id,
                collection=store,
                status="queued",
                files=list(job_files.values()),
                metadata=received.metadata,
                created_at=now,
                updated_at=now,
                # With the in-process runner and local uploads only this instance can run it.
                owner=self.settings.instance_id
                if self.runner.queue is None and not self.storage.shared
                else "",
            )
            async with _store_errors_as_unavailable():
                await self.jobs.create(job)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, job_dir, True))
            if self.storage.shared:
                await asyncio.shield(self.storage.delete_job(job_id))
            raise
        finally:
            self._receiving.pop(job_id, None)
        await self.runner.dispatch(job)
        return job

    async def _document_ids(self, store: str, filenames: list[str]) -> dict[str, str]:
        """Each uploaded name's document id; in the default tenant, a document uploaded before tenants
        under the same name keeps its id (so it is replaced, not duplicated)."""
        ids = {name: upload_document_id(self.document_id_key, store, name) for name in filenames}
        if split_store_name(store)[0] != DEFAULT_TENANT:
            return ids
        legacy = {legacy_upload_document_id(store, name): name for name in filenames}
        existing = await asyncio.to_thread(self.store.get_documents, self._physical(store), list(legacy))
        for old_id in existing:
            ids[legacy[old_id]] = old_id
        return ids

    def _audited(
        self, principal: Principal, action: str, collection: str, object_id: str | None = None
    ) -> AbstractAsyncContextManager[AuditTarget]:
        if self.audit is None:
            return nullcontext(AuditTarget(collection, object_id))
        return self.audit.action(principal, action, collection=collection, object_id=object_id)

    async def submit(
        self, collection: str, files: list[IncomingFile], metadata: dict[str, Any], *, principal: Principal
    ) -> Job:
        """Upload files already in memory: the same checks and limits as a streamed upload."""
        import json

        async def parts() -> AsyncIterator[PartEvent]:
            yield PartStart("metadata", None, None)
            yield PartData(json.dumps(metadata).encode())
            yield PartEnd()
            for f in files:
                yield PartStart("files", f.filename, None)
                if f.data:
                    yield PartData(f.data)
                yield PartEnd()

        return await self.upload(collection, parts(), principal=principal)

    async def get_job(self, job_id: str, *, principal: Principal) -> Job:
        """`principal`'s job; another tenant's (or one in a collection the key may not touch) is
        JobNotFound, exactly like one that does not exist."""
        async with _store_errors_as_unavailable():
            job = await self.jobs.get(job_id)
        if job is None or principal.visible(job.collection) is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return job

    # -- jobs ----------------------------------------------------------------------------------------

    async def cancel_job(self, job_id: str, *, principal: Principal) -> Job:
        """Cancel an unfinished job: files not yet ingested are 'cancelled' (JobStateConflict, 409,
        for a finished job). The worker running it stops at its next boundary."""
        await self.get_job(job_id, principal=principal)
        async with self._audited(principal, "job.cancel", "", job_id), _store_errors_as_unavailable():
            job = await self.jobs.cancel(job_id)
        self.runner.stop_job(job_id)
        return job

    async def retry_job(self, job_id: str, *, principal: Principal) -> Job:
        """Queue a finished job's failed and cancelled files again (JobStateConflict, 409, while it is
        unfinished or when no file failed)."""
        await self.get_job(job_id, principal=principal)
        async with self._audited(principal, "job.retry", "", job_id), _store_errors_as_unavailable():
            job = await self.jobs.retry(job_id)
        await self.runner.dispatch(job)
        return job

    # -- documents read on this machine ------------------------------------------------------------

    def ingest_local(
        self,
        collection: str,
        documents: Iterable[SourceDocument | LoadFailure],
        *,
        principal: Principal,
        on_document: Callable[[str, str, str | None], None] | None = None,
        prune: Callable[[DocumentRecord], bool] | None = None,
    ) -> IngestReport:
        """Ingest documents read on this machine (`ragserver ingest`, the eval corpora) into
        `principal`'s collection, blocking: the version serving it now (one resolution, like an
        upload's job), its pipeline, audited as `document.ingest` (outcome "error" when a file failed).
        `prune`: afterwards, delete the collection's documents this run did not see for which it
        returns True (files gone from an ingested folder; rows gone from a corpus); a document whose
        file failed to load this time is kept."""
        store = principal.collection(collection)
        validate_store_name(store)
        serving = self.versions.serving(store)
        report = serving.pipeline.ingest(documents, serving.physical, on_document=on_document)
        if prune is not None:
            seen = set(report.documents)
            # A file still there that failed to load this time keeps its last good copy.
            failed = {f.source for f in report.failed}
            failed |= {str(Path(source).resolve()) for source in failed}
            gone = [
                r.doc_id
                for r in self.store.iter_documents(serving.physical)
                if r.doc_id not in seen and r.source not in failed and prune(r)
            ]
            report.deleted = serving.pipeline.delete(serving.physical, gone) if gone else 0
        if self.audit is not None:
            entry = AuditEntry(
                tenant=principal.tenant,
                actor=principal.actor,
                key_id=principal.key_id,
                action="document.ingest",
                outcome="ok" if report.ok else "error",
                collection=collection,
                detail=json.dumps(report.to_dict())[:500],
            )
            try:
                self.audit.write(entry)
            except Exception:  # the write is done; a missing audit line must not fail it
                log.exception("the audit entry for an ingest of %s could not be written", store)
        return report

    def load_local(
        self, paths: Iterable[Path], metadata: dict[str, Any] | None = None
    ) -> Iterator[SourceDocument | LoadFailure]:
        """The documents under `paths`, read under the same limits as an upload's files."""
        return iter_documents(paths, metadata=metadata, limits=self.load_limits)

    # -- documents -------------------------------------------------------------------------------

    def _physical(self, store: str) -> str:
        """The physical collection serving `store` now."""
        return self.versions.resolve(store).physical

    async def _existing(self, principal: Principal, collection: str) -> str:
        """The physical collection serving `principal`'s existing collection `collection`, else
        CollectionNotFound."""
        physical = await asyncio.to_thread(self._physical, principal.collection(collection))
        if not await asyncio.to_thread(self.store.has_collection, physical):
            raise CollectionNotFound(f"collection {collection!r} not found")
        return physical

    async def list_documents(
        self, collection: str, limit: int, offset: int, *, principal: Principal
    ) -> tuple[list[DocumentRecord], int]:
        cap = self.settings.limits.max_list_offset
        if offset > cap:
            raise InvalidInput(
                f"offset {offset} is over {cap} (limits.max_list_offset)", code="invalid_offset"
            )
        store = await self._existing(principal, collection)
        records = await asyncio.to_thread(self.store.list_documents, store, limit=limit, offset=offset)
        total = await asyncio.to_thread(self.store.count_documents, store)
        return records, total

    async def get_document(
        self, collection: str, document_id: str, *, principal: Principal
    ) -> DocumentRecord:
        store = await self._existing(principal, collection)
        found = await asyncio.to_thread(self.store.get_documents, store, [document_id])
        if document_id not in found:
            raise DocumentNotFound(f"document {document_id!r} not found in collection {collection!r}")
        return found[document_id]

    async def delete_document(self, collection: str, document_id: str, *, principal: Principal) -> None:
        """Delete `principal`'s document and its chunks. Audited as `document.delete`."""
        async with self._audited(principal, "document.delete", collection, document_id):
            await self.get_document(collection, document_id, principal=principal)
            serving = await asyncio.to_thread(self.versions.serving, principal.collection(collection))
            await asyncio.to_thread(serving.pipeline.delete, serving.physical, [document_id])
