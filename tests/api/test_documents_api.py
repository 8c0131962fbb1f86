"""Upload, jobs, listing and deletion through the ASGI app."""

from __future__ import annotations

import pytest

from tests.api.conftest import upload, wait_for_job

pytestmark = pytest.mark.integration

ETNA = b"Mount Etna is an active volcano on the east coast of Sicily."
PENGUINS = b"# Penguins\n\nEmperor penguins breed during the Antarctic winter.\n"


def test_upload_runs_a_job_and_documents_are_listed(client) -> None:
    response = upload(client, "kb", {"etna.txt": ETNA, "penguins.md": PENGUINS}, metadata='{"team": "geo"}')
    assert response.status_code == 202, response.text
    body = response.json()
    assert {d["filename"] for d in body["documents"]} == {"etna.txt", "penguins.md"}
    job = wait_for_job(client, body["job_id"])
    assert job["status"] == "succeeded"
    assert job["progress"] == {"done": 2, "total": 2}
    assert all(f["status"] == "succeeded" and f["chunks"] >= 1 for f in job["files"])
    # The job record names the instance that holds its uploads (it resumes the job after a restart).
    state = client.app.state.container
    stored = client.portal.call(state.documents.jobs.get, body["job_id"])
    assert stored.owner == state.settings.instance_id and ":" in stored.owner

    listing = client.get("/v1/collections/kb/documents", params={"limit": 1}).json()
    assert listing["total"] == 2 and len(listing["documents"]) == 1
    doc_id = body["documents"][0]["document_id"]
    doc = client.get(f"/v1/collections/kb/documents/{doc_id}").json()
    assert doc["metadata"]["team"] == "geo" and doc["metadata"]["filename"] == "etna.txt"

    # The same file and metadata again: skipped; new metadata: replaced. Nothing duplicated.
    again = upload(client, "kb", {"etna.txt": ETNA}, metadata='{"team": "geo"}')
    assert wait_for_job(client, again.json()["job_id"])["files"][0]["status"] == "skipped"
    changed = upload(client, "kb", {"etna.txt": ETNA}, metadata='{"team": "volcanoes"}')
    assert wait_for_job(client, changed.json()["job_id"])["files"][0]["status"] == "succeeded"
    assert client.get("/v1/collections/kb/documents").json()["total"] == 2
    assert client.get(f"/v1/collections/kb/documents/{doc_id}").json()["metadata"]["team"] == "volcanoes"

    assert client.delete(f"/v1/collections/kb/documents/{doc_id}").status_code == 204
    assert client.get(f"/v1/collections/kb/documents/{doc_id}").status_code == 404
    hits = client.post("/v1/retrieve", json={"query": "volcano in Sicily", "collection": "kb"}).json()[
        "results"
    ]
    assert all(h["document_id"] != doc_id for h in hits)


def test_partial_job_reports_the_bad_file(client) -> None:
    # Passes the content check (PDF header) but cannot be parsed: fails in the job, not at upload.
    response = upload(client, "kb", {"ok.txt": ETNA, "broken.pdf": b"%PDF-1.4\nnot really a pdf"})
    assert response.status_code == 202
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "partial"
    by_name = {f["filename"]: f for f in job["files"]}
    assert by_name["ok.txt"]["status"] == "succeeded"
    assert by_name["broken.pdf"]["status"] == "failed" and "PDF" in by_name["broken.pdf"]["error"]


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ({"big.txt": b"a" * 60_000}, 413, "upload_too_large"),
        ({"image.txt": b"\x89PNG\r\n\x1a\n" + b"\x00" * 100}, 415, "unsupported_media_type"),
        ({"fake.pdf": b"just text"}, 415, "unsupported_media_type"),
        ({"tool.exe": b"MZ"}, 415, "unsupported_media_type"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(client, files, status, code) -> None:
    response = upload(client, "kb", files)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert client.get("/v1/collections/kb/documents").status_code == 404


def test_bad_requests_get_clear_errors(client) -> None:
    assert client.post("/v1/collections/kb/documents").json()["error"]["code"] == "invalid_request"
    bad_meta = upload(client, "kb", {"a.txt": ETNA}, metadata="{not json")
    assert bad_meta.status_code == 400 and bad_meta.json()["error"]["code"] == "invalid_metadata"
    bad_name = upload(client, "bad name!", {"a.txt": ETNA})
    assert bad_name.status_code == 400 and bad_name.json()["error"]["code"] == "invalid_collection_name"
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/collections/missing/documents").json()["error"]["code"] == "collection_not_found"


def test_unfinished_jobs_resume_at_startup(make_container, llm_server) -> None:
    """A job accepted but not run (the process died) is run by the next process."""
    import asyncio
    import time as _time

    from fastapi.testclient import TestClient

    from app.factory import create_app
    from app.jobs.base import Job, JobFile
    from app.jobs.factory import build_job_store

    container = make_container(llm={"provider": "openai", "base_url": llm_server.base_url, "model": "m"})
    settings = container.settings
    stored = settings.uploads_dir / "job1" / "0000_etna.txt"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(ETNA)

    async def record() -> None:
        store = build_job_store(settings)
        now = _time.time()
        files = [JobFile(document_id="etna-doc", filename="etna.txt", stored_path=str(stored))]
        await store.create(Job("job1", "kb", "running", files, {}, now, now, owner=settings.instance_id))
        # Accepted by another replica sharing the job store: its uploads are on that replica's disk.
        theirs = [JobFile(document_id="far-doc", filename="far.txt", stored_path="/elsewhere/far.txt")]
        await store.create(Job("job2", "kb", "queued", theirs, {}, now, now, owner="replica-b:/data"))
        await store.aclose()

    asyncio.run(record())
    with TestClient(create_app(container=container)) as client:
        job = wait_for_job(client, "job1")
        assert job["status"] == "succeeded"
        assert client.get("/v1/collections/kb/documents/etna-doc").status_code == 200
        # The other replica's job is left for it to resume, not failed for want of its files.
        state = client.app.state.container
        client.portal.call(state.runner.wait_idle)
        other = client.get("/v1/jobs/job2").json()
        assert other["status"] == "queued" and other["files"][0]["status"] == "queued"
        assert "owner" not in other


def test_upload_body_is_documented_in_openapi(client) -> None:
    """The upload route parses its body as it streams, so its schema is declared by hand: keep it."""
    operation = client.get("/openapi.json").json()["paths"]["/v1/collections/{collection}/documents"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["files"] and set(schema["properties"]) == {"files", "metadata"}
    assert {"202", "400", "413", "415", "503"} <= set(operation["responses"])


def test_a_document_uploaded_before_tenants_is_replaced_not_duplicated(client) -> None:
    """Uploads made before tenants had id sha1("upload:<collection>:<name>"); the default tenant's
    re-upload under the same name keeps that id. New documents get keyed, unguessable ids."""
    from app.services.document_service import legacy_upload_document_id
    from ingest.loaders import load_bytes

    container = client.app.state.container
    old_id = legacy_upload_document_id("kb", "policy.txt")
    old = load_bytes(b"The per-diem is 60 EUR.", "policy.txt", doc_id=old_id, source="policy.txt")
    assert container.pipeline.ingest([old], "kb").ok

    response = upload(client, "kb", {"policy.txt": b"The per-diem is 65 EUR.", "new.txt": b"New."})
    assert response.status_code == 202, response.text
    ids = {d["filename"]: d["document_id"] for d in response.json()["documents"]}
    assert ids["policy.txt"] == old_id
    assert ids["new.txt"] != legacy_upload_document_id("kb", "new.txt") and len(ids["new.txt"]) == 24
    assert wait_for_job(client, response.json()["job_id"])["status"] == "succeeded"
    listed = client.get("/v1/collections/kb/documents").json()
    assert listed["total"] == 2
    assert "65 EUR" in client.post("/v1/retrieve", json={"query": "per-diem", "collection": "kb"}).text
