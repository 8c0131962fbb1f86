"""The job runner: where an ingestion job is claimed, heartbeated, run and finished, where stale jobs
are reaped and old ones swept. The server's in-process runner and `ragserver worker` call it the same
way: `run_queued(job_id)` runs one job to its end.

What it guarantees:

- a job is run by one worker at a time: `JobStore.claim` hands it out, a heartbeat every third of
  `jobs.heartbeat_timeout_s` keeps it, and the reaper queues again any job whose worker stopped beating
  (ingestion is idempotent, so a job taken over is never duplicated);
- one bad file never fails the others: whatever a loader raises fails that file with its reason; if
  the pipeline itself fails, the files not yet done are failed with the reason, so every job ends
  succeeded, partial or failed with every file final;
- a job store that goes away mid-job does not leave the job `running`: the runner waits for the store
  to answer again and resumes the job;
- `stop()` returns within about a second and a half: the running job stops at its next boundary and
  stays unfinished, so the next start (or another worker's reaper) resumes it;
- finished jobs older than `limits.job_retention_days`, and their upload folders, are deleted at
  start-up and periodically; so are upload folders no job owns.

With `jobs.runner = inprocess` (the default) this process runs the jobs it accepts from an asyncio
queue; with `queue`, accepted jobs go to an arq queue and `ragserver worker` processes run them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from app.jobs.base import Job, JobFile, JobStore, JobStoreUnavailable, final_status
from app.storage import StorageError, UploadStorage
from ingest.loaders import LoadError, load_bytes
from ingest.pipeline import IngestCancelled
from ingest.safety import LoadLimits, display_filename
from ingest.types import LoadFailure, SourceDocument

if TYPE_CHECKING:
    from app.jobs.queue import ArqJobQueue
    from app.services.collection_versions import CollectionVersions
    from app.services.metrics import Metrics
    from app.settings import Settings
    from ingest.vector_index import VectorIndex

__all__ = ["JobRunner"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long stop() waits for a running job to reach its next boundary.
STOP_GRACE_S = 1.5
# An upload folder no job record owns is deleted once it is this old (an upload still streaming
# has no record yet, and is skipped anyway).
ORPHAN_UPLOAD_AGE_S = 3600.0


class JobRunner:
    """Claims and runs ingestion jobs one at a time, reaps stale ones, sweeps old ones."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        storage: UploadStorage,
        versions: CollectionVersions,
        store: VectorIndex,
        metrics: Metrics,
        *,
        queue: ArqJobQueue | None = None,
        arriving: Callable[[], Collection[str]] = frozenset,
    ):
        self.settings = settings
        self.jobs = jobs
        self.storage = storage
        # Blue/green: a job writes to the version serving its collection when the job starts.
        self.versions = versions
        self.store = store
        self.metrics = metrics
        # None: the in-process runner (this process runs the jobs it accepts); else an arq queue that
        # `ragserver worker` processes consume.
        self.queue = queue
        # Ids of the uploads still being received (DocumentService): their folders are not orphans.
        self.arriving = arriving
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.load_limits = LoadLimits.from_settings(settings.limits)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        # Set by stop(): no new job starts. Each running job has its own event (stop, cancel, or another
        # worker took the job over): its pipeline stops at the next boundary.
        self._cancel = threading.Event()
        self._running: dict[str, threading.Event] = {}
        self._job_thread: threading.Thread | None = None
        # Jobs this instance accepted and resumes at start-up: claimed whatever their heartbeat.
        self._resumed: set[str] = set()

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.settings.jobs.heartbeat_timeout_s

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """In the server: start the retention sweep (once now, then periodically) and, with the
        in-process runner, the run loop and the reaper, re-queuing the jobs a previous process of this
        instance left unfinished. With the queue runner, `ragserver worker` processes run jobs."""
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

    async def stop(self) -> None:
        """Stop within about STOP_GRACE_S: a running job stops at its next boundary and stays
        queued/running in the job store, so the next start resumes it."""
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
        """Wait until every job queued in this process has finished (tests, benchmarks)."""
        await self._queue.join()

    # -- queuing ---------------------------------------------------------------------------------------

    async def dispatch(self, job: Job) -> None:
        """Queue `job` to be run: on this process's queue, or on the arq queue for the workers."""
        if self.queue is None:
            await self._queue.put(job.job_id)
        else:
            await self.queue.enqueue(job)

    async def waiting(self) -> int:
        """Jobs queued and not yet picked up."""
        return self._queue.qsize() if self.queue is None else await self.queue.depth()

    def stop_job(self, job_id: str) -> None:
        """Stop `job_id` at its next boundary if this process is running it (it was cancelled)."""
        running = self._running.get(job_id)
        if running is not None:
            running.set()

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
            await self.dispatch(job)
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

    # -- running ---------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self.run_queued(job_id)
            finally:
                self._queue.task_done()

    async def run_queued(self, job_id: str) -> None:
        """Run a job until every file is final; a no-op when the job is finished, cancelled or held by
        another live worker. A job store outage does not fail it: the runner waits for the store and
        runs the job again (files already final are not redone)."""
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
        except asyncio.CancelledError:  # the runner is stopping: the pipeline stops at its next boundary
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
        serving = self.versions.serving(job.collection)

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
                record = self.store.get_documents(serving.physical, [file.document_id]).get(file.document_id)
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

        serving.pipeline.ingest(items(), serving.physical, on_document=on_document, cancel=cancel)

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
        except (LoadError, StorageError) as exc:
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
        arriving = self.arriving()
        for job_id, written in (await self.storage.job_ids()).items():
            if job_id in arriving or job_id in jobs:
                continue
            if now - written < ORPHAN_UPLOAD_AGE_S or await self.jobs.get(job_id) is not None:
                continue
            await self.storage.delete_job(job_id)
            orphans += 1
        if jobs or orphans:
            log.info("retention: deleted %d finished jobs and %d orphan upload folders", len(jobs), orphans)
        return {"jobs": len(jobs), "orphan_uploads": orphans}
