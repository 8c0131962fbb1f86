"""JobRunner on the fake graph (tests/unit/fakes.py): a job whose worker died is reaped and run again, a
cancel stops a running job, the retention sweep deletes what is old and nothing arriving, stop() does not
wait for a batch, and a job store outage mid-job does not fail the job. Each test has a graph of its own:
they take the runner through states the others must not see."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.jobs.runner import STOP_GRACE_S
from app.services.document_service import IncomingFile, JobNotFound
from tests.unit.fakes import ANONYMOUS, FlakyJobStore, GatedEmbedder, HeldUpload, fake_container, ingest

pytestmark = pytest.mark.unit

ETNA = b"Mount Etna is an active volcano on the east coast of Sicily."
PENGUINS = b"Emperor penguins breed during the Antarctic winter."
DAY = 86400.0


@pytest.fixture
def gated() -> Iterator[GatedEmbedder]:
    embedder = GatedEmbedder()
    yield embedder
    embedder.gate.set()  # whatever the test did, no ingestion thread stays parked


async def refused(store: FlakyJobStore) -> None:
    """Return once `store` has turned a call away."""
    while store.refused == 0:
        await asyncio.sleep(0.01)


async def test_a_job_whose_worker_stopped_heartbeating_is_reaped_and_run_again(tmp_path: Path) -> None:
    # Not started: no periodic reaper or run loop; the test runs each step itself.
    async with fake_container(tmp_path, start=False, jobs={"heartbeat_timeout_s": 0.2}) as c:
        job = await c.documents.submit("kb", [IncomingFile("etna.txt", ETNA)], {}, principal=ANONYMOUS)
        claimed = await c.jobs.claim(job.job_id, "dead-host:1", stale_before=time.time())
        assert claimed is not None and claimed.heartbeat_at is not None
        assert (claimed.status, claimed.worker, claimed.attempts) == ("running", "dead-host:1", 1)
        assert await c.runner.reap(now=claimed.heartbeat_at) == []  # its heartbeat is fresh
        await asyncio.sleep(0.3)  # past jobs.heartbeat_timeout_s: the worker is taken for dead
        assert await c.runner.reap() == [job.job_id]
        await c.runner.run_queued(job.job_id)
        done = await c.documents.get_job(job.job_id, principal=ANONYMOUS)
        # The dead worker, were it to wake up, learns that the job is no longer its own.
        assert await c.jobs.heartbeat(job.job_id, "dead-host:1") is None
        assert c.store.count_documents("kb") == 1
    assert (done.status, done.worker, done.attempts) == ("succeeded", c.runner.worker_id, 2)
    assert [(f.status, f.chunks) for f in done.files] == [("succeeded", 1)]


async def test_a_cancelled_running_job_stops_and_stays_cancelled(
    tmp_path: Path, gated: GatedEmbedder
) -> None:
    async with fake_container(tmp_path, embedder=gated) as c:
        job = await c.documents.submit("kb", [IncomingFile("etna.txt", ETNA)], {}, principal=ANONYMOUS)
        await gated.wait_until_held()  # running, inside its batch
        cancelled = await c.documents.cancel_job(job.job_id, principal=ANONYMOUS)
        gated.gate.set()
        await c.runner.wait_idle()
        after = await c.documents.get_job(job.job_id, principal=ANONYMOUS)
        written = c.store.count_documents("kb")
        next_job = await ingest(c, "kb", {"penguins.txt": PENGUINS})  # the runner is free for the next
    assert (cancelled.status, [f.status for f in cancelled.files]) == ("cancelled", ["cancelled"])
    assert (after.status, [(f.status, f.error) for f in after.files]) == (
        "cancelled",
        [("cancelled", "cancelled")],
    )
    assert written == 0  # the batch in flight was dropped, not written
    assert next_job.status == "succeeded"


async def test_the_sweep_deletes_old_finished_jobs_and_orphan_folders_but_not_arriving_uploads(
    tmp_path: Path,
) -> None:
    async with fake_container(tmp_path, limits={"job_retention_days": 30}) as c:
        uploads = c.settings.uploads_dir
        failed = await ingest(c, "kb", {"empty.txt": b""})  # a failed job keeps its upload folder
        (uploads / "orphan").mkdir()
        (uploads / "orphan" / "0000_left.txt").write_bytes(ETNA)
        held = await HeldUpload.start(c, "kb")
        (arriving,) = c.documents.arriving()
        before = sorted(p.name for p in uploads.iterdir())
        now = time.time()
        fresh = await c.runner.sweep(now=now)
        later = await c.runner.sweep(now=now + 31 * DAY)
        after = sorted(p.name for p in uploads.iterdir())
        with pytest.raises(JobNotFound):
            await c.documents.get_job(failed.job_id, principal=ANONYMOUS)
        accepted = await held.finish()
        await c.runner.wait_idle()
        finished = await c.documents.get_job(accepted.job_id, principal=ANONYMOUS)
    assert failed.status == "failed"
    assert before == sorted([failed.job_id, "orphan", arriving])
    assert fresh == {"jobs": 0, "orphan_uploads": 0}
    assert later == {"jobs": 1, "orphan_uploads": 1}
    assert after == [arriving]
    assert (accepted.job_id, finished.status) == (arriving, "succeeded")


async def test_stop_returns_while_a_job_is_mid_batch_and_the_next_start_resumes_it(
    tmp_path: Path, gated: GatedEmbedder
) -> None:
    async with fake_container(tmp_path, embedder=gated) as c:
        job = await c.documents.submit("kb", [IncomingFile("etna.txt", ETNA)], {}, principal=ANONYMOUS)
        await gated.wait_until_held()
        # The batch never reaches its boundary while the gate is shut: stop() gives up on it in time.
        await asyncio.wait_for(c.runner.stop(), timeout=STOP_GRACE_S + 2)
        stopped = await c.documents.get_job(job.job_id, principal=ANONYMOUS)
        gated.gate.set()
        await c.runner.start()
        await c.runner.wait_idle()
        resumed = await c.documents.get_job(job.job_id, principal=ANONYMOUS)
        documents = c.store.count_documents("kb")
    assert (stopped.status, [f.status for f in stopped.files]) == ("running", ["queued"])
    assert (resumed.status, resumed.attempts, [f.status for f in resumed.files]) == (
        "succeeded",
        2,
        ["succeeded"],
    )
    assert documents == 1


async def test_a_job_store_outage_mid_job_does_not_fail_the_job(tmp_path: Path, gated: GatedEmbedder) -> None:
    async with fake_container(tmp_path, start=False, embedder=gated) as c:
        flaky = FlakyJobStore(c.jobs)
        c.jobs = flaky  # before the runner and the document service are built
        await c.runner.start()
        job = await c.documents.submit("kb", [IncomingFile("etna.txt", ETNA)], {}, principal=ANONYMOUS)
        await gated.wait_until_held()
        flaky.down = True
        gated.gate.set()  # the batch is written, then recording its outcome fails
        await asyncio.wait_for(refused(flaky), timeout=10)
        await asyncio.sleep(0.2)  # down a while: the runner waits, pinging
        flaky.down = False
        await c.runner.wait_idle()
        done = await c.documents.get_job(job.job_id, principal=ANONYMOUS)
        documents, chunks = c.store.count_documents("kb"), c.store.count_chunks("kb")
    assert (done.status, done.attempts) == ("succeeded", 2)
    # The run after the outage found the document written before it, unchanged: skipped, not written twice.
    assert [(f.status, f.chunks) for f in done.files] == [("skipped", 1)]
    assert (documents, chunks) == (1, 1)
