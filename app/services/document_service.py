"""Uploads and ingestion jobs: store first, then ingest in the background through the same pipeline
as the CLI. Unfinished jobs (a crash, a restart, a stop) are picked up again at start-up.

What this service guarantees (docs/SECURITY.md lists the limits):

- an upload streams into `<data_dir>/uploads/<job_id>/` with every limit checked as the bytes arrive
  (`app.services.uploads`); a refused upload, or one the job store cannot record (503), leaves nothing;
- the in-process queue is bounded (`limits.max_queued_jobs`): beyond it an upload answers 503 with
  Retry-After before reading its body;
- one bad file never fails the others: whatever a loader raises fails that file with its reason; if
  the pipeline itself fails, the files not yet done are failed with the reason, so every job ends
  succeeded, partial or failed with every file final;
- a job store that goes away mid-job does not leave the job `running`: the worker waits for the store
  to answer again and resumes the job (ingestion is idempotent);
- `stop()` returns within about a second and a half: the running job stops at its next boundary and
  stays unfinished, so the next start resumes it;
- finished jobs older than `limits.job_retention_days`, and their upload folders, are deleted at
  start-up and periodically; so are upload folders no job owns.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from app.auth.audit import AuditLog, AuditTarget
from app.auth.principal import Principal
from app.jobs.base import Job, JobFile, JobStore, JobStoreUnavailable, final_status
from app.jobs.queue import ArqJobQueue
from app.services.errors import InvalidInput, RateLimited, Unavailable
from app.services.metrics import Metrics
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
from app.storage import LocalStorage, StorageError, UploadStorage
from ingest.errors import DomainError
from ingest.loaders import LoadError, load_bytes
from ingest.pipeline import IngestCancelled, IngestPipeline
from ingest.safety import LoadLimits, display_filename
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
T = TypeVar("T")

# Seconds a client is told to wait: the queue is full, or the job store is unreachable.
RETRY_AFTER_S = 5
# How long stop() waits for a running job to reach its next boundary.
STOP_GRACE_S = 1.5
# An upload folder no job record owns is deleted once it is this old (an upload still streaming
# has no record yet, and is skipped anyway).
ORPHAN_UPLOAD_AGE_S = 3600.0


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
    """Accepts uploads, runs ingestion jobs one at a time, and lists/deletes documents."""

    def __init__(
        self,
        settings: Settings,
        store: VectorIndex,
        pipeline: IngestPipeline,
        jobs: JobStore,
        metrics: Metrics,
        *,
        audit: AuditLog | None = None,
        document_id_key: bytes = b"",
        storage: UploadStorage | None = None,
        queue: ArqJobQueue | None = None,
        versions: CollectionVersions | None = None,
    ):
        self.settings = settings
        # Blue/green: reads and writes go to the version serving the collection when they start.
        self.versions = versions
        self.audit = audit
        self.document_id_key = document_id_key
        self.store = store
        self.pipeline = pipeline
        self.jobs = jobs
        self.metrics = metrics
        self.storage: UploadStorage = storage or LocalStorage(settings.uploads_dir)
        # None: the in-process runner (this process runs the jobs it accepts); else an arq queue that
        # `ragserver worker` processes consume.
        self.queue = queue
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.upload_limits = UploadLimits.from_settings(settings)
        self.load_limits = LoadLimits.from_settings(settings.limits)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        # Uploads being received, by job id, with who sends them: they hold a queue slot (counted against
        # their tenant's and key's caps too), and their folders are not orphans.
        self._receiving: dict[str, Principal] = {}
        self._worker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Set by stop(): no new job starts. Each running job has its own event (stop, cancel, or another
        # worker took the job over): its pipeline stops at the next boundary.
        self._cancel = threading.Event()
        self._running: dict[str, threading.Event] = {}
        self._job_thread: threading.Thread | None = None
        self._reaper: asyncio.Task[None] | None = None
        # Jobs this instance accepted and resumes at start-up: claimed whatever their heartbeat.
        self._resumed: set[str] = set()

    @property
    def max_upload_bytes(self) -> int:
        return self.upload_limits.max_file_bytes

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.settings.jobs.heartbeat_timeout_s

    async def start(self) -> None:
        """Start the retention sweep (once now, then periodically) and, with the in-process runner, the
        job worker, re-queuing the jobs a previous process of this instance left unfinished. With the
        queue runner, `ragserver worker` processes run jobs (`start_worker`)."""
        self._cancel.clear()
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="ingest-retention")
        if self.queue is not None:
            return
        self._worker = asyncio.create_task(self._work(), name="ingest-worker")
        me = self.settings.instance_id
        try:
            unfinished = await self.jobs.list_unfinished()
        except JobStoreUnavailable:
            log.exception("cannot list unfinished jobs: the job store is unavailable; they resume next start")
            unfinished = []
        for job in unfinished:
            if job.owner and job.owner != me:
                # Another replica accepted it and holds its uploads; it resumes the job itself.
                log.info("leaving unfinished job %s to its owner %s", job.job_id, job.owner)
                continue
            log.info("resuming ingestion job %s", job.job_id)
            if job.owner == me:  # this instance's own: its heartbeat may be a dead process's, still fresh
                self._resumed.add(job.job_id)
            await self._queue.put(job.job_id)
        self._reaper = asyncio.create_task(self._reap_periodically(), name="ingest-reaper")

    async def start_worker(self) -> None:
        """In a `ragserver worker` process: start the reaper, which queues again every job whose worker
        stopped heartbeating for `jobs.heartbeat_timeout_s` (and queued jobs nobody picked up)."""
        self._cancel.clear()
        self._reaper = asyncio.create_task(self._reap_periodically(), name="ingest-reaper")

    async def run_queued(self, job_id: str) -> None:
        """Run one job a queue message names (the worker's task); a no-op when the job is finished,
        cancelled or held by another live worker."""
        await self._run_to_the_end(job_id)

    async def reap(self, now: float | None = None) -> list[str]:
        """Queue again the jobs `list_stale` finds; returns their ids."""
        now = time.time() if now is None else now
        stale = await self.jobs.list_stale(now - self.heartbeat_timeout_s)
        if self.queue is None:  # the in-process runner can only run jobs whose uploads it can read
            stale = [job for job in stale if job.owner in ("", self.settings.instance_id)]
        for job in stale:
            log.warning(
                "re-queuing job %s (%s, worker %r, attempt %d): no heartbeat for %.0f s",
                job.job_id,
                job.status,
                job.worker,
                job.attempts,
                self.heartbeat_timeout_s,
            )
            await self._dispatch(job)
        return [job.job_id for job in stale]

    async def _reap_periodically(self) -> None:
        every = max(0.2, self.heartbeat_timeout_s / 3)
        while True:
            try:
                await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper pass failed; trying again")
            await asyncio.sleep(every)

    async def _dispatch(self, job: Job) -> None:
        if self.queue is None:
            await self._queue.put(job.job_id)
        else:
            await self.queue.enqueue(job)

    async def cancel_job(self, job_id: str, *, principal: Principal) -> Job:
        """Cancel an unfinished job: files not yet ingested are 'cancelled' (JobStateConflict, 409,
        for a finished job). The worker running it stops at its next boundary."""
        await self.get_job(job_id, principal=principal)
        async with self._audited(principal, "job.cancel", "", job_id), _store_errors_as_unavailable():
            job = await self.jobs.cancel(job_id)
        running = self._running.get(job_id)
        if running is not None:
            running.set()
        return job

    async def retry_job(self, job_id: str, *, principal: Principal) -> Job:
        """Queue a finished job's failed and cancelled files again (JobStateConflict, 409, while it is
        unfinished or when no file failed)."""
        await self.get_job(job_id, principal=principal)
        async with self._audited(principal, "job.retry", "", job_id), _store_errors_as_unavailable():
            job = await self.jobs.retry(job_id)
        await self._dispatch(job)
        return job

    async def stop(self) -> None:
        """Stop the worker within about STOP_GRACE_S: a running job stops at its next boundary and
        stays queued/running in the job store, so the next start resumes it."""
        deadline = time.monotonic() + STOP_GRACE_S
        self._cancel.set()
        for running in list(self._running.values()):
            running.set()
        tasks = [t for t in (self._worker, self._sweeper, self._reaper) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        thread = self._job_thread
        if thread is not None and thread.is_alive():
            # The pipeline checks the cancel event between documents and batches.
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("ingestion thread still busy at stop; its job resumes at the next start")
        self._worker = self._sweeper = self._reaper = None

    async def wait_idle(self) -> None:
        """Wait until every queued job has finished (tests, benchmarks)."""
        await self._queue.join()

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
            queued = self._queue.qsize() if self.queue is None else await self.queue.depth()
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
                owner=self.settings.instance_id if self.queue is None and not self.storage.shared else "",
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
        await self._dispatch(job)
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

    # -- the worker --------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run_to_the_end(job_id)
            finally:
                self._queue.task_done()

    async def _run_to_the_end(self, job_id: str) -> None:
        """Run a job until every file is final. A job store outage does not fail it: the worker waits
        for the store and runs the job again (files already final are not redone)."""
        delay = 0.5
        while not self._cancel.is_set():
            try:
                await self._run(job_id)
                return
            except IngestCancelled:
                log.info("ingestion job %s stopped; it resumes at the next start", job_id)
                return
            except JobStoreUnavailable as exc:
                log.warning("job store unavailable during job %s (%s); resuming once it answers", job_id, exc)
                delay = await self._wait_for_job_store(delay)
            except Exception as exc:
                log.exception("ingestion job %s failed", job_id)
                try:
                    await self._fail_remaining(job_id, f"ingestion failed: {type(exc).__name__}: {exc}")
                    return
                except JobStoreUnavailable:
                    delay = await self._wait_for_job_store(delay)

    async def _wait_for_job_store(self, delay: float) -> float:
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            if await self.jobs.ping():
                return 0.5

    async def _fail_remaining(self, job_id: str, reason: str) -> None:
        """Fail every file not yet final with `reason`, then give the job its final status."""
        job = await self.jobs.get(job_id)
        if job is None or job.is_finished:
            return
        for f in job.files:
            if not f.is_final:
                await self.jobs.update_file(job_id, f.document_id, "failed", reason[:2000], 0)
        await self._finish(job_id)

    async def _finish(self, job_id: str) -> None:
        done = await self.jobs.get(job_id)
        assert done is not None
        status = final_status(done.files)
        # A cancel that landed meanwhile stays (the job is no longer queued or running).
        if not await self.jobs.set_status(job_id, status, only_from=("queued", "running")):
            return
        self.metrics.jobs.labels(status=status).inc()
        if status == "succeeded":
            await self.storage.delete_job(job_id)

    async def _run(self, job_id: str) -> None:
        # A running job is taken over once its worker stopped heartbeating; the in-process runner
        # resumes the jobs it accepted at once (only it can read their uploads).
        forced = job_id in self._resumed
        self._resumed.discard(job_id)
        stale_before = float("inf") if forced else time.time() - self.heartbeat_timeout_s
        job = await self.jobs.claim(job_id, self.worker_id, stale_before)
        if job is None:
            return
        cancel = threading.Event()
        if self._cancel.is_set():
            cancel.set()
        self._running[job_id] = cancel
        beat = asyncio.create_task(self._heartbeat(job_id, cancel), name=f"heartbeat-{job_id}")
        try:
            todo = [f for f in job.files if not f.is_final]
            if todo:
                await self._in_job_thread(self._ingest_job, job, todo, asyncio.get_running_loop(), cancel)
        except asyncio.CancelledError:  # the worker is stopping: the pipeline stops at its next boundary
            cancel.set()
            raise
        finally:
            beat.cancel()
            self._running.pop(job_id, None)
        await self._finish(job_id)

    async def _heartbeat(self, job_id: str, cancel: threading.Event) -> None:
        """Say this worker is alive every third of the timeout; stop the job when it was cancelled or
        another worker took it over (this one was thought dead)."""
        every = max(0.1, self.heartbeat_timeout_s / 3)
        while True:
            await asyncio.sleep(every)
            try:
                status = await self.jobs.heartbeat(job_id, self.worker_id)
            except JobStoreUnavailable:
                continue
            if status is None or status == "cancelled":
                log.info("job %s %s; stopping it", job_id, "cancelled" if status else "taken over")
                cancel.set()
                return

    def _ingest_job(
        self, job: Job, todo: list[JobFile], loop: asyncio.AbstractEventLoop, cancel: threading.Event
    ) -> None:
        """Runs in the job's thread: load each file (a failure is that file's), ingest, and record
        each file's outcome as it finishes."""
        by_doc = {f.document_id: f for f in todo}
        by_path = {f.stored_path: f for f in todo}
        pipeline, physical = self._writer(job.collection)

        def on_document(doc: str, status: str, error: str | None) -> None:
            file = by_doc.get(doc) or by_path.get(doc)
            if file is None:
                return
            final = {"added": "succeeded", "replaced": "succeeded", "skipped": "skipped"}.get(
                status, "failed"
            )
            self.metrics.documents.labels(status=status).inc()
            chunks = 0
            if final != "failed":
                record = self.store.get_documents(physical, [file.document_id]).get(file.document_id)
                chunks = record.chunks if record is not None else 0
            # Called from an ingestion thread: hand the async update to the event loop and wait.
            asyncio.run_coroutine_threadsafe(
                self.jobs.update_file(job.job_id, file.document_id, final, error, chunks), loop
            ).result(timeout=120)

        def items() -> Iterator[SourceDocument | LoadFailure]:
            for f in todo:
                if cancel.is_set():
                    return
                yield self._load(job, f)

        pipeline.ingest(items(), physical, on_document=on_document, cancel=cancel)

    def _physical(self, store: str) -> str:
        """The physical collection serving `store` now."""
        return self.versions.resolve(store).physical if self.versions is not None else store

    def _writer(self, store: str) -> tuple[IngestPipeline, str]:
        """The pipeline for the version serving `store` now (its model and chunking), and its name."""
        if self.versions is None:
            return self.pipeline, store
        version = self.versions.resolve(store)
        pipeline = self.versions.pipeline_for(
            version.embedding_model, version.chunk_size, version.chunk_overlap
        )
        return pipeline, version.physical

    def _load(self, job: Job, f: JobFile) -> SourceDocument | LoadFailure:
        """One stored upload as a document, or its failure: nothing a file holds can raise past here."""
        shown = display_filename(f.filename, self.settings.limits.max_filename_chars)
        original = f.original_filename or (f.filename if f.filename != shown else None)
        metadata: dict[str, Any] = {**job.metadata, "filename": shown}
        if original is not None:
            metadata["original_filename"] = original
        try:
            data = self.storage.read(f.stored_path)
            return load_bytes(
                data, shown, doc_id=f.document_id, source=shown, metadata=metadata, limits=self.load_limits
            )
        except LoadError as exc:
            return LoadFailure(source=f.stored_path, error=str(exc))
        except StorageError as exc:
            return LoadFailure(source=f.stored_path, error=str(exc))
        except Exception as exc:  # a loader bug must still fail only this file
            log.exception("loading %s failed", f.stored_path)
            return LoadFailure(
                source=f.stored_path, error=f"cannot read the file: {type(exc).__name__}: {exc}"
            )

    async def _in_job_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on a daemon thread of its own and await it. Unlike asyncio.to_thread, a job still
        finishing its batch never holds up the process's exit, and stop() can wait for it with a
        timeout."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(setter: Callable[[Any], None], value: Any) -> None:
            if not future.done():
                setter(value)

        def run() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:
                outcome: tuple[Callable[[Any], None], Any] = (future.set_exception, exc)
            else:
                outcome = (future.set_result, result)
            try:
                loop.call_soon_threadsafe(settle, *outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        thread = threading.Thread(target=run, name="ingest-job", daemon=True)
        self._job_thread = thread
        thread.start()
        return await future

    # -- retention -----------------------------------------------------------------------------------

    async def _sweep_periodically(self) -> None:
        days = self.settings.limits.job_retention_days
        every = 3600.0 if days <= 0 else min(3600.0, max(60.0, days * 86400 / 24))
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await asyncio.sleep(every)

    async def sweep(self, now: float | None = None) -> dict[str, int]:
        """Delete finished jobs older than limits.job_retention_days (0: keep them) with their upload
        folders, and upload folders no job owns that are over an hour old. Returns the counts."""
        now = time.time() if now is None else now
        days = self.settings.limits.job_retention_days
        jobs: list[str] = []
        if days > 0:
            jobs = await self.jobs.delete_finished(now - days * 86400)
            for job_id in jobs:
                await self.storage.delete_job(job_id)
        orphans = 0
        for job_id, written in (await self.storage.job_ids()).items():
            if job_id in self._receiving or job_id in jobs:
                continue
            if now - written < ORPHAN_UPLOAD_AGE_S or await self.jobs.get(job_id) is not None:
                continue
            await self.storage.delete_job(job_id)
            orphans += 1
        if jobs or orphans:
            log.info("retention: deleted %d finished jobs and %d orphan upload folders", len(jobs), orphans)
        return {"jobs": len(jobs), "orphan_uploads": orphans}

    # -- documents -------------------------------------------------------------------------------

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
            pipeline, physical = await asyncio.to_thread(self._writer, principal.collection(collection))
            await asyncio.to_thread(pipeline.delete, physical, [document_id])
