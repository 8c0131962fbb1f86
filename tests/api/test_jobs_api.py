"""Job control through the ASGI app with the in-process runner (the queue runner's version is in
tests/e2e/test_cluster.py): the worker and attempts a job shows, cancel, retry, and uploads kept in an
S3 bucket (moto's server on loopback) instead of the data dir."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import scripted_llm, upload, wait_for_job
from tests.conftest_services import moto_s3

pytestmark = pytest.mark.integration

ETNA = b"Mount Etna is an active volcano on the east coast of Sicily."
BROKEN_PDF = b"%PDF-1.4\nnot really a pdf"


def test_a_job_shows_its_worker_and_attempts(client) -> None:
    job = wait_for_job(client, upload(client, "kb", {"etna.txt": ETNA}).json()["job_id"])
    assert job["status"] == "succeeded"
    assert job["worker"]["pid"] == os.getpid() and job["worker"]["host"]
    assert job["attempts"] == 1


def test_retry_runs_the_failed_files_again(client) -> None:
    job_id = upload(client, "kb", {"ok.txt": ETNA, "broken.pdf": BROKEN_PDF}).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "partial"
    retried = client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    assert {f["filename"]: f["status"] for f in retried.json()["files"]} == {
        "ok.txt": "succeeded",
        "broken.pdf": "queued",
    }
    again = wait_for_job(client, job_id)
    assert again["status"] == "partial" and again["attempts"] == 2
    # The stored upload was kept for the retry: it fails for what it is, not for being gone.
    broken = next(f for f in again["files"] if f["filename"] == "broken.pdf")
    assert "PDF" in broken["error"]


def test_cancel_and_retry_refusals(client) -> None:
    job_id = upload(client, "kb", {"etna.txt": ETNA}).json()["job_id"]
    wait_for_job(client, job_id)
    finished = client.post(f"/v1/jobs/{job_id}/cancel")
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "job_state_conflict"
    nothing_failed = client.post(f"/v1/jobs/{job_id}/retry")
    assert nothing_failed.status_code == 409 and "no failed" in nothing_failed.json()["error"]["message"]
    for action in ("cancel", "retry"):
        unknown = client.post(f"/v1/jobs/not-a-job/{action}")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"


def test_cancel_a_queued_job(client) -> None:
    """A job recorded but not yet run: cancelling it cancels every file, and nothing is ingested."""
    from app.jobs.base import Job, JobFile

    container = client.app.state.container
    now = time.time()
    stored = container.settings.uploads_dir / "waiting" / "0000_etna.txt"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(ETNA)
    files = [JobFile(document_id="etna-doc", filename="etna.txt", stored_path=str(stored))]
    client.portal.call(container.jobs.create, Job("waiting", "kb", "queued", files, {}, now, now))
    cancelled = client.post("/v1/jobs/waiting/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["files"][0]["status"] == "cancelled"
    # Its message reaching a worker now does nothing: the claim refuses a cancelled job.
    client.portal.call(container.runner.run_queued, "waiting")
    assert client.get("/v1/collections/kb/documents/etna-doc").status_code == 404


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with moto_s3() as url:
        yield url


def test_uploads_in_s3(make_container, llm_server, s3_endpoint: str) -> None:
    import boto3

    from app.factory import create_app

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="uploads")
    container = make_container(
        llm=scripted_llm(llm_server),
        storage={"url": "s3://uploads/ragserver", "endpoint_url": s3_endpoint},
    )

    def stored_keys() -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket="uploads").get("Contents", [])]

    with TestClient(create_app(container=container), raise_server_exceptions=False) as client:
        ok = upload(client, "kb", {"etna.txt": ETNA}).json()["job_id"]
        assert wait_for_job(client, ok)["status"] == "succeeded"
        assert client.get("/v1/collections/kb/documents").json()["total"] == 1
        # Nothing left behind on the replica's disk, and the bucket is emptied once the job succeeded.
        assert not any(p.is_file() for p in container.settings.uploads_dir.rglob("*"))
        assert stored_keys() == []

        partial = upload(client, "kb", {"again.txt": ETNA, "broken.pdf": BROKEN_PDF}).json()["job_id"]
        job = wait_for_job(client, partial)
        assert job["status"] == "partial"
        # A job that did not succeed keeps its uploads (for a retry), under <prefix>/<job_id>/.
        assert len(stored_keys()) == 2
        assert all(k.startswith(f"ragserver/{partial}/") for k in stored_keys())
        assert job["worker"] is not None
        assert "stored_path" not in job["files"][0]

        # The retention sweep deletes a stored upload no job owns, once it is over an hour old.
        s3.put_object(Bucket="uploads", Key="ragserver/orphan/0000_x.txt", Body=b"x")
        swept = client.portal.call(container.runner.sweep, time.time() + 7200)
        assert swept["orphan_uploads"] == 1
        assert all(not k.startswith("ragserver/orphan/") for k in stored_keys())
        assert len(stored_keys()) == 2  # the partial job's files are its own


def test_storage_url_is_checked(make_container) -> None:
    from app.storage import LocalStorage, build_storage

    for bad in ("s3://", "ftp://host/x"):
        with pytest.raises(ValueError, match="storage.url"):
            build_storage(make_container(storage={"url": bad}).settings)
    local = build_storage(make_container(storage={"url": "/tmp/elsewhere"}).settings)
    assert isinstance(local, LocalStorage) and str(local.root) == "/tmp/elsewhere"
