"""What every `JobStore` must do, as a mixin of tests (haystack's document-store test style).

A test class inherits `JobStoreContract` and provides `make_store()`, a fixture returning a factory
whose stores all share one backend (same database), empty when the test starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from uuid import uuid4

import pytest

from app.jobs.base import Job, JobFile, JobStore, final_status

StoreFactory = Callable[[], Awaitable[JobStore]]


def make_job(n_files: int = 3, status: str = "queued", created_at: float | None = None) -> Job:
    now = time.time() if created_at is None else created_at
    return Job(
        job_id=uuid4().hex,
        collection="default",
        status=status,
        files=[JobFile(f"doc-{i}", f"file-{i}.pdf", f"/uploads/{i}/file-{i}.pdf") for i in range(n_files)],
        metadata={"uploader": "Zoë", "tags": ["a", "ß"], "nested": {"k": [1, 2.5, None]}},
        created_at=now,
        updated_at=now,
        owner="replica-a:/srv/ragserver/data",
    )


class JobStoreContract:
    @pytest.fixture
    async def store(self, make_store: StoreFactory) -> JobStore:
        return await make_store()

    async def test_is_a_job_store(self, store: JobStore) -> None:
        assert isinstance(store, JobStore)

    async def test_ping(self, store: JobStore) -> None:
        assert await store.ping() is True

    async def test_create_then_get_round_trips(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        stored = await store.get(job.job_id)
        assert stored == job
        assert stored is not None and stored.to_dict() == job.to_dict()
        assert stored.owner == "replica-a:/srv/ragserver/data"
        assert stored.progress == {"done": 0, "total": 3}

    async def test_count_queued_by_tenant(self, store: JobStore) -> None:
        def job(collection: str, status: str = "queued") -> Job:
            made = make_job(1, status=status)
            made.collection = collection
            return made

        for collection in ("acme.hr", "acme.hr--v2", "acme.legal", "acme_x.hr", "beta.hr", "hr", "legal"):
            await store.create(job(collection))
        await store.create(job("acme.hr", status="running"))
        assert await store.count_queued("acme.") == 3
        assert await store.count_queued("beta.") == 1
        assert await store.count_queued("acme_x.") == 1
        assert await store.count_queued("nobody.") == 0
        assert await store.count_queued(None) == 2  # the default tenant's bare names

    async def test_unknown_job_is_none(self, store: JobStore) -> None:
        assert await store.get("never-seen") is None

    async def test_create_twice_is_refused(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        with pytest.raises(ValueError):
            await store.create(job)

    async def test_update_file(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        await store.update_file(job.job_id, "doc-1", "failed", error="unreadable PDF: ✗")
        await store.update_file(job.job_id, "doc-2", "succeeded", chunks=12)
        stored = await store.get(job.job_id)
        assert stored is not None
        assert [(f.status, f.error, f.chunks) for f in stored.files] == [
            ("queued", None, 0),
            ("failed", "unreadable PDF: ✗", 0),
            ("succeeded", None, 12),
        ]
        assert stored.updated_at >= job.updated_at
        assert stored.progress == {"done": 2, "total": 3}

    async def test_update_unknown_job_or_file(self, store: JobStore) -> None:
        with pytest.raises(KeyError):
            await store.update_file("never-seen", "doc-0", "running")
        job = make_job()
        await store.create(job)
        with pytest.raises(KeyError):
            await store.update_file(job.job_id, "no-such-doc", "running")
        with pytest.raises(KeyError):
            await store.set_status("never-seen", "running")

    async def test_invalid_status_is_refused(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        with pytest.raises(ValueError):
            await store.update_file(job.job_id, "doc-0", "done")
        with pytest.raises(ValueError):
            await store.set_status(job.job_id, "partial-ish")

    async def test_lifecycle_to_final_status(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        await store.set_status(job.job_id, "running")
        for doc_id, status in [("doc-0", "succeeded"), ("doc-1", "skipped"), ("doc-2", "failed")]:
            await store.update_file(job.job_id, doc_id, status)
        stored = await store.get(job.job_id)
        assert stored is not None
        await store.set_status(job.job_id, final_status(stored.files))
        stored = await store.get(job.job_id)
        assert stored is not None and stored.status == "partial" and stored.is_finished

    async def test_list_unfinished(self, store: JobStore) -> None:
        queued = make_job(created_at=1000.0)
        running = make_job(created_at=2000.0, status="running")
        done = make_job(created_at=500.0, status="succeeded")
        for job in (running, done, queued):
            await store.create(job)
        assert [j.job_id for j in await store.list_unfinished()] == [queued.job_id, running.job_id]
        await store.set_status(queued.job_id, "failed")
        assert [j.job_id for j in await store.list_unfinished()] == [running.job_id]
        await store.set_status(done.job_id, "queued")  # re-queued by hand: resumed again
        unfinished = await store.list_unfinished()
        assert [j.job_id for j in unfinished] == [done.job_id, running.job_id]
        assert unfinished[1] == await store.get(running.job_id)

    async def test_concurrent_file_updates_lose_nothing(self, store: JobStore) -> None:
        job = make_job(n_files=30)
        await store.create(job)
        await asyncio.gather(
            *(
                store.update_file(job.job_id, f.document_id, "succeeded", chunks=i)
                for i, f in enumerate(job.files)
            )
        )
        stored = await store.get(job.job_id)
        assert stored is not None
        assert [(f.status, f.chunks) for f in stored.files] == [("succeeded", i) for i in range(30)]
        assert final_status(stored.files) == "succeeded"

    async def test_original_filename_round_trips(self, store: JobStore) -> None:
        job = make_job(n_files=2)
        job.files[0].original_filename = "x" * 5000 + "invoice\u202efdp.txt"
        await store.create(job)
        stored = await store.get(job.job_id)
        assert stored is not None
        assert [f.original_filename for f in stored.files] == [job.files[0].original_filename, None]

    async def test_delete_finished_keeps_unfinished_and_recent_jobs(self, store: JobStore) -> None:
        old = {
            status: make_job(status=status, created_at=1000.0)
            for status in ("succeeded", "failed", "partial")
        }
        unfinished = [
            make_job(status="queued", created_at=1000.0),
            make_job(status="running", created_at=1000.0),
        ]
        recent = make_job(status="succeeded", created_at=5000.0)
        for job in [*old.values(), *unfinished, recent]:
            await store.create(job)
        deleted = await store.delete_finished(updated_before=2000.0)
        assert sorted(deleted) == sorted(j.job_id for j in old.values())
        for job in old.values():
            assert await store.get(job.job_id) is None
        for job in [*unfinished, recent]:
            assert await store.get(job.job_id) == job
        assert await store.delete_finished(updated_before=2000.0) == []

    async def test_job_without_files(self, store: JobStore) -> None:
        job = make_job(n_files=0)
        await store.create(job)
        assert await store.get(job.job_id) == job

    async def test_new_instance_sees_data(self, make_store: StoreFactory) -> None:
        first = await make_store()
        job = make_job()
        await first.create(job)
        await first.update_file(job.job_id, "doc-0", "running")
        await first.aclose()
        second = await make_store()
        stored = await second.get(job.job_id)
        assert stored is not None and stored.files[0].status == "running"
        assert [j.job_id for j in await second.list_unfinished()] == [job.job_id]

    # -- workers: claims, heartbeats, the reaper, cancel and retry ---------------------------------

    async def test_claim_takes_a_queued_job_once(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        now = time.time()
        claims = await asyncio.gather(*(store.claim(job.job_id, f"host:{pid}", now - 30) for pid in range(8)))
        won = [c for c in claims if c is not None]
        assert len(won) == 1
        assert won[0].status == "running" and won[0].attempts == 1
        assert won[0].heartbeat_at is not None and won[0].heartbeat_at >= now - 1
        stored = await store.get(job.job_id)
        assert stored is not None and stored.worker == won[0].worker

    async def test_claim_takes_over_only_a_stale_running_job(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        assert await store.claim(job.job_id, "a:1", time.time() - 30) is not None
        # a:1 is alive (fresh heartbeat): b:2 cannot take the job.
        assert await store.claim(job.job_id, "b:2", time.time() - 30) is None
        assert await store.heartbeat(job.job_id, "a:1") == "running"
        # Once the heartbeat is older than the cut-off, b:2 takes it over; a:1's next beat says so.
        taken = await store.claim(job.job_id, "b:2", time.time() + 1)
        assert taken is not None and taken.worker == "b:2" and taken.attempts == 2
        assert await store.heartbeat(job.job_id, "a:1") is None
        assert await store.heartbeat(job.job_id, "b:2") == "running"
        assert await store.heartbeat("never-seen", "b:2") is None
        # A worker may claim its own running job again (it resumes after a job-store outage).
        again = await store.claim(job.job_id, "b:2", 0)
        assert again is not None and again.attempts == 3

    async def test_claim_never_takes_a_finished_job(self, store: JobStore) -> None:
        job = make_job(status="succeeded")
        await store.create(job)
        assert await store.claim(job.job_id, "a:1", time.time() + 60) is None
        assert await store.claim("never-seen", "a:1", time.time()) is None

    async def test_list_stale(self, store: JobStore) -> None:
        fresh, dead, waiting, done = (
            make_job(),
            make_job(),
            make_job(created_at=time.time() - 100),
            make_job(),
        )
        for job in (fresh, dead, waiting, done):
            await store.create(job)
        await store.claim(fresh.job_id, "a:1", 0)
        await store.claim(dead.job_id, "b:2", 0)
        await store.set_status(done.job_id, "succeeded")
        cut_off = time.time() + 0.5
        await asyncio.sleep(0.6)
        await store.heartbeat(fresh.job_id, "a:1")
        stale = {j.job_id for j in await store.list_stale(cut_off)}
        assert stale == {dead.job_id, waiting.job_id}

    async def test_set_status_only_from(self, store: JobStore) -> None:
        job = make_job()
        await store.create(job)
        await store.cancel(job.job_id)
        assert await store.set_status(job.job_id, "succeeded", only_from=("queued", "running")) is False
        stored = await store.get(job.job_id)
        assert stored is not None and stored.status == "cancelled"
        assert await store.set_status(job.job_id, "failed", only_from=("cancelled",)) is True
        with pytest.raises(KeyError):
            await store.set_status("never-seen", "failed", only_from=("queued",))

    async def test_cancel_keeps_finished_files(self, store: JobStore) -> None:
        from app.jobs.base import JobStateConflict

        job = make_job()
        await store.create(job)
        await store.update_file(job.job_id, "doc-0", "succeeded", chunks=4)
        cancelled = await store.cancel(job.job_id)
        assert cancelled.status == "cancelled"
        assert [f.status for f in cancelled.files] == ["succeeded", "cancelled", "cancelled"]
        assert cancelled.is_finished
        with pytest.raises(JobStateConflict):
            await store.cancel(job.job_id)
        with pytest.raises(KeyError):
            await store.cancel("never-seen")

    async def test_retry_requeues_failed_and_cancelled_files(self, store: JobStore) -> None:
        from app.jobs.base import JobStateConflict

        job = make_job()
        await store.create(job)
        with pytest.raises(JobStateConflict):
            await store.retry(job.job_id)  # still queued
        await store.claim(job.job_id, "a:1", 0)
        await store.update_file(job.job_id, "doc-0", "succeeded", chunks=4)
        await store.update_file(job.job_id, "doc-1", "failed", error="bad pdf")
        await store.cancel(job.job_id)
        retried = await store.retry(job.job_id)
        assert retried.status == "queued" and retried.worker == "" and retried.attempts == 1
        assert [(f.status, f.error, f.chunks) for f in retried.files] == [
            ("succeeded", None, 4),
            ("queued", None, 0),
            ("queued", None, 0),
        ]
        await store.claim(job.job_id, "a:1", 0)
        for name in ("doc-1", "doc-2"):
            await store.update_file(job.job_id, name, "succeeded", chunks=1)
        await store.set_status(job.job_id, "succeeded")
        with pytest.raises(JobStateConflict):
            await store.retry(job.job_id)  # nothing failed
