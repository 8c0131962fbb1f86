"""Faults and overload around ingestion jobs: the job store down (real PostgreSQL behind a switchable
proxy), a pipeline that raises, a stop in the middle of a job, a full queue, retention and fsync.
No job stays stuck, no accepted upload is lost, and a refused one leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.api.conftest import scripted_llm, upload, wait_for_job
from tests.security.conftest import TcpProxy, proxied

pytestmark = pytest.mark.integration

GOOD = b"Mount Etna is an active volcano on the east coast of Sicily."
PENGUINS = b"Emperor penguins breed during the Antarctic winter."
LONG = " ".join(
    f"Paragraph {i} says something about volcanoes, lava, ash clouds and the people who study them."
    for i in range(400)
).encode()


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(default_reply="ok [1].") as server:
        yield server


def build(tmp_path: Path, llm: ScriptedOpenAIServer, embedder: Any, query_embedder: Any, **overrides: Any):
    from app.container import Container
    from app.settings import Settings

    overrides.setdefault("data_dir", tmp_path / "data")
    settings = Settings(_env_file=None, llm=scripted_llm(llm), **overrides)  # type: ignore[call-arg]
    return Container(settings, embedder=embedder, query_embedder=query_embedder)


def through_proxy(tmp_path: Path, llm: Any, embedder: Any, query_embedder: Any, url: str, proxy: TcpProxy):
    """A container whose job store is the PostgreSQL at `url` reached through `proxy`."""
    return build(tmp_path, llm, embedder, query_embedder, database={"url": proxied(url, proxy)})


def app_client(container: Any) -> TestClient:
    from app.factory import create_app

    return TestClient(create_app(container=container), raise_server_exceptions=False)


def job_dirs(container: Any) -> list[str]:
    root = container.settings.uploads_dir
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def poll_job(client: TestClient, job_id: str, timeout: float) -> dict:
    """The job once finished; answers of 503 (store down) are waited through."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200:
            last = response.json()
            if last["status"] not in ("queued", "running"):
                return last
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {last}")


def chunks_of(container: Any, collection: str, doc_id: str) -> int:
    return sum(1 for c in container.store.iter_chunks(collection) if c.doc_id == doc_id)


class GatedEmbedder:
    """The real embedder behind a gate (and a delay per call), counting calls."""

    def __init__(self, inner: Any, delay_s: float = 0.0):
        self.inner = inner
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.model_id = inner.model_id
        self.dim = inner.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        assert self.gate.wait(30), "gate never opened"
        time.sleep(self.delay_s)
        return self.inner.embed(texts)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


# -- the job store down ----------------------------------------------------------------------------


def test_upload_with_the_job_store_down_answers_503_and_leaves_nothing(
    tmp_path: Path, llm, embedder, query_embedder, postgres_url: str, postgres_proxy: TcpProxy
) -> None:
    container = through_proxy(tmp_path, llm, embedder, query_embedder, postgres_url, postgres_proxy)
    with app_client(container) as client:
        postgres_proxy.set("refuse")
        response = upload(client, "kb", {"etna.txt": GOOD, "penguins.txt": PENGUINS})
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "unavailable"
        assert job_dirs(container) == []  # no orphan upload
        assert client.get("/v1/jobs/anything").status_code == 503
        postgres_proxy.set("up")
        response = upload(client, "kb", {"etna.txt": GOOD})
        assert response.status_code == 202
        assert wait_for_job(client, response.json()["job_id"])["status"] == "succeeded"


def test_keys_cannot_be_checked_while_the_database_is_down_503_then_back(
    tmp_path: Path, llm, embedder, query_embedder, postgres_url: str, postgres_proxy: TcpProxy
) -> None:
    container = build(
        tmp_path,
        llm,
        embedder,
        query_embedder,
        database={"url": proxied(postgres_url, postgres_proxy)},
        auth={"mode": "api_key", "key_cache_s": 0},
    )
    _, key = container.keys.create(tenant="acme", name="bot", role="reader")
    headers = {"Authorization": f"Bearer {key}"}
    with app_client(container) as client:
        assert client.get("/v1/models", headers=headers).status_code == 200
        postgres_proxy.set("refuse")
        down = client.get("/v1/models", headers=headers)
        assert down.status_code == 503 and down.json()["error"]["code"] == "auth_unavailable"
        assert down.headers["retry-after"] == "5" and key not in down.text
        postgres_proxy.set("up")
        assert client.get("/v1/models", headers=headers).status_code == 200


class TripOnFirstWrite:
    """A pipeline listener that cuts the job store right after the first batch reached the vector
    index (before any file's status is recorded) and restores it `down_s` later."""

    def __init__(self, proxy: TcpProxy, down_s: float):
        self.proxy = proxy
        self.down_s = down_s
        self.tripped = threading.Event()

    def apply(self, collection: str, upserted: list, deleted_ids: list) -> None:
        if not self.tripped.is_set():
            self.tripped.set()
            self.proxy.set("refuse")
            threading.Timer(self.down_s, self.proxy.set, args=("up",)).start()

    def flush(self, collection: str) -> None:
        pass


def test_job_store_outage_mid_job_resumes_and_finishes(
    tmp_path: Path, llm, embedder, query_embedder, postgres_url: str, postgres_proxy: TcpProxy
) -> None:
    container = through_proxy(tmp_path, llm, embedder, query_embedder, postgres_url, postgres_proxy)
    with app_client(container) as client:
        trip = TripOnFirstWrite(postgres_proxy, down_s=1.0)
        container.pipeline.listeners.append(trip)
        files = {"etna.txt": GOOD, "penguins.txt": PENGUINS}
        response = upload(client, "kb", files)
        assert response.status_code == 202
        job = poll_job(client, response.json()["job_id"], timeout=30)
        assert trip.tripped.is_set()
        assert job["status"] == "succeeded", job
        for f in job["files"]:
            assert f["status"] in ("succeeded", "skipped") and f["error"] is None
            record = container.store.get_documents("kb", [f["document_id"]])[f["document_id"]]
            assert f["chunks"] == record.chunks == chunks_of(container, "kb", f["document_id"]) >= 1
        assert container.store.count_chunks("kb") == sum(f["chunks"] for f in job["files"])


# -- one bad file, a failing pipeline --------------------------------------------------------------


def test_pipeline_failure_fails_the_remaining_files_with_the_reason(
    tmp_path: Path, llm, embedder, query_embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = build(tmp_path, llm, embedder, query_embedder)
    with app_client(container) as client:

        def disk_on_fire(*_: Any, **__: Any) -> None:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(container.store, "upsert_chunks", disk_on_fire)
        response = upload(client, "kb", {"etna.txt": GOOD, "bad.pdf": b"%PDF-1.4 not really"})
        job = wait_for_job(client, response.json()["job_id"], timeout=30)
        assert job["status"] == "failed"
        by_name = {f["filename"]: f for f in job["files"]}
        assert "PDF" in by_name["bad.pdf"]["error"]  # its own reason, recorded before the crash
        assert by_name["etna.txt"]["status"] == "failed"
        assert by_name["etna.txt"]["error"] == "ingestion failed: RuntimeError: disk on fire"
        monkeypatch.undo()
        again = upload(client, "kb", {"etna.txt": GOOD})
        assert wait_for_job(client, again.json()["job_id"])["status"] == "succeeded"


# -- stop in the middle of a job -------------------------------------------------------------------


def test_stop_returns_quickly_and_the_next_start_finishes_the_job(
    tmp_path: Path, llm, embedder, query_embedder
) -> None:
    from app.jobs.factory import build_job_store

    slow = GatedEmbedder(embedder, delay_s=0.3)
    container = build(tmp_path, llm, slow, query_embedder)
    client = app_client(container)
    with client:
        container.pipeline.cancel_slice = 4  # many small embedding calls: many boundaries
        response = upload(client, "kb", {"long.txt": LONG, "etna.txt": GOOD})
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 30
        while slow.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.calls >= 2
        started = time.monotonic()
    stopped_in = time.monotonic() - started  # the lifespan's shutdown: JobRunner.stop() and closing
    calls = slow.calls
    time.sleep(1.0)
    assert stopped_in < 2.0, f"stop took {stopped_in:.2f}s"
    assert slow.calls <= calls + 1, "the job kept embedding after stop()"

    async def stored() -> Any:
        jobs = build_job_store(container.settings)
        try:
            return await jobs.get(job_id)
        finally:
            await jobs.aclose()

    left = asyncio.run(stored())
    assert left.status == "running" and any(not f.is_final for f in left.files)

    fresh = build(tmp_path, llm, embedder, query_embedder)
    with app_client(fresh) as client:
        job = wait_for_job(client, job_id, timeout=60)
        assert job["status"] == "succeeded"
        for f in job["files"]:
            record = fresh.store.get_documents("kb", [f["document_id"]])[f["document_id"]]
            assert f["chunks"] == record.chunks == chunks_of(fresh, "kb", f["document_id"]) >= 1
        assert fresh.store.count_chunks("kb") == sum(f["chunks"] for f in job["files"])


# -- overload --------------------------------------------------------------------------------------


def test_a_full_queue_answers_503_and_stores_nothing(tmp_path: Path, llm, embedder, query_embedder) -> None:
    gated = GatedEmbedder(embedder)
    container = build(tmp_path, llm, gated, query_embedder, limits={"max_queued_jobs": 1})
    with app_client(container) as client:
        try:
            gated.gate.clear()
            running = upload(client, "kb", {"a.txt": GOOD}).json()["job_id"]
            deadline = time.monotonic() + 10
            while gated.calls == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            queued = upload(client, "kb", {"b.txt": PENGUINS})
            assert queued.status_code == 202
            refused = upload(client, "kb", {"c.txt": GOOD})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            assert refused.json()["error"]["code"] == "queue_full"
            assert "limits.max_queued_jobs" in refused.json()["error"]["message"]
            assert job_dirs(container) == sorted([running, queued.json()["job_id"]])
        finally:
            gated.gate.set()
        assert wait_for_job(client, running)["status"] == "succeeded"
        assert wait_for_job(client, queued.json()["job_id"])["status"] == "succeeded"
        assert upload(client, "kb", {"c.txt": GOOD}).status_code == 202


# -- retention and durability ----------------------------------------------------------------------


def test_retention_deletes_old_finished_jobs_and_their_uploads_at_start(
    tmp_path: Path, llm, embedder, query_embedder
) -> None:
    from app.jobs.base import Job, JobFile
    from app.jobs.factory import build_job_store

    container = build(tmp_path, llm, embedder, query_embedder, limits={"job_retention_days": 1})
    settings = container.settings
    now = time.time()
    day = 86400.0

    def job(job_id: str, status: str, age_days: float, owner: str = settings.instance_id) -> Job:
        folder = settings.uploads_dir / job_id
        folder.mkdir(parents=True)
        (folder / "0000_a.txt").write_bytes(GOOD)
        files = [JobFile(f"d-{job_id}", "a.txt", str(folder / "0000_a.txt"), "failed", "x")]
        at = now - age_days * day
        return Job(job_id, "kb", status, files, {}, at, at, owner=owner)

    jobs = [
        job("old-ok", "succeeded", 3),
        job("old-failed", "failed", 3),
        job("old-partial", "partial", 2),
        job("recent-failed", "failed", 0.5),
        job("old-unfinished", "queued", 5, owner="replica-b:/elsewhere"),
    ]

    async def record() -> None:
        store = build_job_store(settings)
        for j in jobs:
            await store.create(j)
        await store.aclose()

    asyncio.run(record())
    for name, age_s in (("orphan-old", 2 * 3600), ("orphan-new", 60)):
        folder = settings.uploads_dir / name
        folder.mkdir()
        (folder / "0000_x.txt.part").write_bytes(b"partial")
        os.utime(folder, (now - age_s, now - age_s))

    with app_client(container) as client:
        deadline = time.monotonic() + 10
        while "orphan-old" in job_dirs(container) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job_dirs(container) == ["old-unfinished", "orphan-new", "recent-failed"]
        for gone in ("old-ok", "old-failed", "old-partial"):
            assert client.get(f"/v1/jobs/{gone}").status_code == 404
        assert client.get("/v1/jobs/recent-failed").json()["status"] == "failed"
        assert client.get("/v1/jobs/old-unfinished").json()["status"] == "queued"
        # The periodic sweep does the same later on.
        swept = client.portal.call(container.runner.sweep, now + 2 * day)  # type: ignore[union-attr]
        assert swept == {"jobs": 1, "orphan_uploads": 1}
        assert job_dirs(container) == ["old-unfinished"]


def test_upload_files_and_their_folders_are_fsynced(
    tmp_path: Path, llm, embedder, query_embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = build(tmp_path, llm, embedder, query_embedder)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    with app_client(container) as client:
        monkeypatch.setattr(os, "fsync", recording_fsync)
        response = upload(client, "kb", {"etna.txt": GOOD})
        monkeypatch.undo()
        assert response.status_code == 202
        job_dir = container.settings.uploads_dir / response.json()["job_id"]
        assert str(job_dir) in synced and str(job_dir.parent) in synced
        assert any(path.startswith(str(job_dir / "0000_etna.txt")) for path in synced)
        wait_for_job(client, response.json()["job_id"])


async def _thread_id() -> int:
    return threading.get_ident()


def test_document_routes_never_call_the_vector_index_on_the_event_loop(
    tmp_path: Path, llm, embedder, query_embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow or hung Chroma must stall only the requests that wait for it, never the event loop."""
    container = build(tmp_path, llm, embedder, query_embedder)
    with app_client(container) as client:
        job = wait_for_job(client, upload(client, "kb", {"etna.txt": GOOD}).json()["job_id"])
        loop_thread = client.portal.call(_thread_id)  # type: ignore[union-attr]
        callers: list[tuple[str, int]] = []
        for name in ("has_collection", "list_documents", "count_documents", "get_documents"):
            real = getattr(container.store, name)

            def recording(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                callers.append((_name, threading.get_ident()))
                return _real(*args, **kwargs)

            monkeypatch.setattr(container.store, name, recording)
        doc_id = job["files"][0]["document_id"]
        assert client.get("/v1/collections/kb/documents").status_code == 200
        assert client.get(f"/v1/collections/kb/documents/{doc_id}").status_code == 200
        assert client.get("/v1/collections/missing/documents").status_code == 404
        assert {name for name, _ in callers} == {
            "has_collection",
            "list_documents",
            "count_documents",
            "get_documents",
        }
        assert all(ident != loop_thread for _, ident in callers), callers
