"""DocumentService on the fake graph (tests/unit/fakes.py): an upload becomes a job the in-process runner
ingests; documents are listed, replaced and deleted; each tenant and key has its share of the queue;
documents read on this machine are ingested and pruned under the same audit; another tenant's jobs and
documents do not exist."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from app.auth.principal import Principal
from app.container import Container
from app.jobs.base import JobStateConflict
from app.services.document_service import DocumentNotFound, IncomingFile, JobNotFound
from app.services.errors import RateLimited, Unavailable
from ingest.errors import describe
from ingest.pipeline import IngestReport
from ingest.types import LoadFailure, Segment, SourceDocument
from tests.unit.fakes import ANONYMOUS, HeldUpload, fake_container, ingest

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="module")]

ETNA = b"Mount Etna is an active volcano on the east coast of Sicily."
PENGUINS = b"Emperor penguins breed during the Antarctic winter."
LONG = " ".join(f"Paragraph {i} tells of volcanoes, lava and ash clouds." for i in range(150)).encode()
# A PDF's first bytes (so the upload is taken for a PDF) over a body no PDF reader can parse.
BROKEN_PDF = b"%PDF-1.4\nthe rest of this PDF never arrived"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def container(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    """One graph for the module; each test works in collections of its own."""
    async with fake_container(tmp_path_factory.mktemp("documents")) as built:
        yield built


def local_doc(doc_id: str, text: bytes, folder: str = "notes") -> SourceDocument:
    return SourceDocument(
        doc_id=doc_id, source=f"/{folder}/{doc_id}.txt", title=doc_id, segments=[Segment(text.decode())]
    )


async def test_an_upload_becomes_a_job_whose_documents_are_listed_with_their_chunks(
    container: Container,
) -> None:
    job = await ingest(container, "up-list", {"etna.txt": ETNA, "long.txt": LONG}, metadata={"team": "geo"})
    records, total = await container.documents.list_documents("up-list", 10, 0, principal=ANONYMOUS)
    etna, long = job.files
    assert job.status == "succeeded"
    assert [(f.filename, f.status, f.error) for f in job.files] == [
        ("etna.txt", "succeeded", None),
        ("long.txt", "succeeded", None),
    ]
    assert total == 2
    assert {r.doc_id: (r.source, r.chunks) for r in records} == {
        etna.document_id: ("etna.txt", etna.chunks),
        long.document_id: ("long.txt", long.chunks),
    }
    assert etna.chunks == 1 and long.chunks > 1
    assert etna.chunks + long.chunks == container.store.count_chunks("up-list")
    assert [r.metadata["team"] for r in records] == ["geo", "geo"]


async def test_the_same_name_again_replaces_its_document_and_unchanged_bytes_are_skipped(
    container: Container,
) -> None:
    first = await ingest(container, "up-replace", {"notes.txt": ETNA})
    second = await ingest(container, "up-replace", {"notes.txt": PENGUINS})
    third = await ingest(container, "up-replace", {"notes.txt": PENGUINS})
    doc_id = first.files[0].document_id
    assert [j.files[0].document_id for j in (second, third)] == [doc_id, doc_id]
    assert [(j.status, j.files[0].status) for j in (first, second, third)] == [
        ("succeeded", "succeeded"),
        ("succeeded", "succeeded"),
        ("succeeded", "skipped"),
    ]
    records, total = await container.documents.list_documents("up-replace", 10, 0, principal=ANONYMOUS)
    assert ([r.doc_id for r in records], total) == ([doc_id], 1)
    assert [c.text for c in container.store.iter_chunks("up-replace")] == [PENGUINS.decode()]


async def test_a_file_that_cannot_be_read_fails_alone(container: Container) -> None:
    job = await ingest(container, "up-partial", {"etna.txt": ETNA, "broken.pdf": BROKEN_PDF})
    good, bad = job.files
    assert job.status == "partial"
    assert (good.status, good.chunks) == ("succeeded", 1)
    assert (bad.status, bad.chunks) == ("failed", 0)
    assert bad.error is not None and bad.error.startswith("corrupt or unreadable PDF")
    records, total = await container.documents.list_documents("up-partial", 10, 0, principal=ANONYMOUS)
    assert ([r.doc_id for r in records], total) == ([good.document_id], 1)


async def test_cancelling_a_finished_job_is_a_conflict(container: Container) -> None:
    job = await ingest(container, "up-cancel", {"etna.txt": ETNA})
    with pytest.raises(JobStateConflict) as refused:
        await container.documents.cancel_job(job.job_id, principal=ANONYMOUS)
    error = describe(refused.value)
    assert error is not None and (error.status, error.code) == (409, "job_state_conflict")
    assert (await container.documents.get_job(job.job_id, principal=ANONYMOUS)).status == "succeeded"
    audited = [e for e in container.audit.query(action="job.cancel") if e.object_id == job.job_id]
    assert [(e.outcome, e.status) for e in audited] == [("error", 409)]


async def test_retry_runs_the_failed_files_again_and_only_those(container: Container) -> None:
    job = await ingest(container, "up-retry", {"empty.txt": b"", "etna.txt": ETNA})
    empty = job.files[0]
    assert (job.status, empty.status) == ("partial", "failed")
    assert empty.error == "no text found (empty file, or a PDF without a text layer)"
    # The cause goes away where the upload waits (a failed job keeps its files).
    Path(empty.stored_path).write_bytes(PENGUINS)
    queued = await container.documents.retry_job(job.job_id, principal=ANONYMOUS)
    assert (queued.status, [f.status for f in queued.files]) == ("queued", ["queued", "succeeded"])
    await container.runner.wait_idle()
    done = await container.documents.get_job(job.job_id, principal=ANONYMOUS)
    assert (done.status, done.attempts) == ("succeeded", 2)
    assert [(f.status, f.chunks) for f in done.files] == [("succeeded", 1), ("succeeded", 1)]
    with pytest.raises(JobStateConflict, match="no failed or cancelled file"):
        await container.documents.retry_job(job.job_id, principal=ANONYMOUS)


async def test_each_key_and_each_tenant_has_its_share_of_the_uploads_arriving(tmp_path: Path) -> None:
    def key(key_id: str, tenant: str = "acme") -> Principal:
        return Principal(tenant=tenant, role="writer", key_id=key_id)

    file = [IncomingFile("a.txt", ETNA)]
    limits = {"max_uploads_per_key": 1, "max_uploads_per_tenant": 2}
    async with fake_container(tmp_path, start=False, limits=limits) as c:
        held = [await HeldUpload.start(c, "kb", key("k1"))]
        with pytest.raises(RateLimited) as over_key:
            await c.documents.submit("kb", file, {}, principal=key("k1"))
        held.append(await HeldUpload.start(c, "kb", key("k2")))
        with pytest.raises(RateLimited) as over_tenant:
            await c.documents.submit("kb", file, {}, principal=key("k3"))
        elsewhere = await c.documents.submit("kb", file, {}, principal=key("k9", tenant="globex"))
        assert len(c.documents.arriving()) == 2
        accepted = [await h.finish() for h in held]
        folders = sorted(p.name for p in c.settings.uploads_dir.iterdir())
    assert "limits.max_uploads_per_key" in str(over_key.value)
    assert "limits.max_uploads_per_tenant" in str(over_tenant.value)
    for refused in (over_key.value, over_tenant.value):
        error = describe(refused)
        assert error is not None
        assert (error.status, error.code, error.headers) == (429, "too_many_uploads", {"Retry-After": "5"})
    assert [(j.collection, j.status) for j in accepted] == [("acme.kb", "queued")] * 2
    assert (elsewhere.collection, elsewhere.status) == ("globex.kb", "queued")
    # A refused upload leaves nothing behind: only the accepted ones have folders.
    assert folders == sorted(j.job_id for j in [*accepted, elsewhere])


async def test_past_its_share_of_the_queue_a_tenant_waits_and_past_the_queue_everyone_does(
    tmp_path: Path,
) -> None:
    acme = Principal(tenant="acme", role="writer", key_id="ka")
    globex = Principal(tenant="globex", role="writer", key_id="kg")
    file = [IncomingFile("a.txt", ETNA)]
    limits = {"max_queued_jobs": 3, "max_queued_jobs_per_tenant": 2}
    async with fake_container(tmp_path, start=False, limits=limits) as c:  # nothing runs: jobs stay queued
        for _ in range(2):
            await c.documents.submit("kb", file, {}, principal=acme)
        with pytest.raises(RateLimited) as tenant_full:
            await c.documents.submit("kb", file, {}, principal=acme)
        await c.documents.submit("kb", file, {}, principal=ANONYMOUS)
        with pytest.raises(Unavailable) as queue_full:
            await c.documents.submit("kb", file, {}, principal=globex)
        assert await c.runner.waiting() == 3
    tenant_error, queue_error = describe(tenant_full.value), describe(queue_full.value)
    assert tenant_error is not None and queue_error is not None
    assert "limits.max_queued_jobs_per_tenant" in tenant_error.message
    assert (tenant_error.status, tenant_error.code) == (429, "too_many_uploads")
    assert (queue_error.status, queue_error.code, queue_error.headers) == (
        503,
        "queue_full",
        {"Retry-After": "5"},
    )


async def test_ingest_local_prunes_only_documents_gone_from_the_set_and_is_audited(
    container: Container,
) -> None:
    documents = container.documents
    first = documents.ingest_local(
        "local-prune",
        [local_doc("a", ETNA), local_doc("b", PENGUINS), local_doc("c", LONG), local_doc("x", ETNA, "other")],
        principal=ANONYMOUS,
    )
    second = documents.ingest_local(
        "local-prune",
        [local_doc("a", ETNA), local_doc("b", PENGUINS), LoadFailure("/notes/d.txt", "cannot read file")],
        principal=ANONYMOUS,
        prune=lambda record: record.source.startswith("/notes/"),
    )
    assert (first.added, first.deleted, first.ok) == (4, 0, True)
    assert (second.skipped, second.deleted, [f.source for f in second.failed]) == (2, 1, ["/notes/d.txt"])
    # c is gone from /notes; x was not seen either, but it is not one of /notes.
    assert sorted(r.doc_id for r in container.store.iter_documents("local-prune")) == ["a", "b", "x"]
    audited = [e for e in container.audit.query(action="document.ingest") if e.collection == "local-prune"]
    assert [(e.outcome, e.actor) for e in audited] == [("error", "anonymous"), ("ok", "anonymous")]
    assert json.loads(audited[0].detail or "{}")["deleted"] == 1


async def test_prune_keeps_a_document_whose_file_is_still_there_but_failed_to_load(
    container: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_bytes(ETNA)
    (folder / "b.txt").write_bytes(PENGUINS)
    root = str(folder.resolve())
    documents = container.documents

    def ingest_folder() -> IngestReport:
        # As `ragserver ingest notes/ --prune` does: prune what was ingested from the folder.
        return documents.ingest_local(
            "local-kept",
            documents.load_local([folder]),
            principal=ANONYMOUS,
            prune=lambda record: record.source.startswith(root + "/"),
        )

    first = ingest_folder()
    (folder / "b.txt").write_bytes(b"")  # still there, unreadable this time (emptied while being saved)
    second = ingest_folder()
    assert first.added == 2
    assert [Path(f.source).name for f in second.failed] == ["b.txt"]
    # "Delete documents previously ingested from these folders whose files are gone": b.txt is not gone.
    assert second.deleted == 0
    assert container.store.count_documents("local-kept") == 2


async def test_delete_document_removes_it_and_its_chunks(container: Container) -> None:
    job = await ingest(container, "up-delete", {"etna.txt": ETNA, "long.txt": LONG})
    etna, long = (f.document_id for f in job.files)
    await container.documents.delete_document("up-delete", long, principal=ANONYMOUS)
    records, total = await container.documents.list_documents("up-delete", 10, 0, principal=ANONYMOUS)
    assert ([r.doc_id for r in records], total) == ([etna], 1)
    assert {c.doc_id for c in container.store.iter_chunks("up-delete")} == {etna}
    with pytest.raises(DocumentNotFound):
        await container.documents.delete_document("up-delete", long, principal=ANONYMOUS)
    audited = [e for e in container.audit.query(action="document.delete") if e.object_id == long]
    assert [(e.outcome, e.status) for e in audited] == [("error", 404), ("ok", None)]


async def test_another_tenants_jobs_and_documents_are_not_found(container: Container) -> None:
    other = Principal(tenant="t2", role="admin", key_id="k-t2")
    mine = await ingest(container, "up-tenant", {"etna.txt": ETNA})
    theirs = await ingest(container, "up-tenant", {"etna.txt": ETNA}, principal=other)
    doc_id = mine.files[0].document_id
    assert theirs.files[0].document_id != doc_id  # ids are per tenant, never guessable across them
    documents = container.documents
    for call in (documents.get_job, documents.cancel_job, documents.retry_job):
        with pytest.raises(JobNotFound):
            await call(mine.job_id, principal=other)
    with pytest.raises(DocumentNotFound):
        await documents.get_document("up-tenant", doc_id, principal=other)
    with pytest.raises(DocumentNotFound):
        await documents.delete_document("up-tenant", doc_id, principal=other)
    assert (await documents.get_document("up-tenant", doc_id, principal=ANONYMOUS)).doc_id == doc_id
    assert (await documents.get_job(mine.job_id, principal=ANONYMOUS)).status == "succeeded"
