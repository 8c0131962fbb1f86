"""The scale-out topology as processes on loopback (`app.devtools.cluster`, what `make cluster` starts):
PostgreSQL, Redis, `chroma run`, an S3 endpoint (moto), two API replicas and two `ragserver worker`
processes, each with a data dir of its own. One test walks the issue's scenario end to end:

upload through replica A; poll the job through B; kill -9 the worker holding it mid-ingest; another
worker finishes it (exact document and chunk counts: nothing duplicated); BM25-only retrieval on B
finds the new document within 5 s; a chat on B continues on A; a delete on A disappears from B within
5 s; a replica started afterwards finds the documents too.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devtools.cluster import Cluster
from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.conftest_services import TEST_POSTGRES_URL, _postgres_answers, require_service

FILES = 80
COLLECTION = "handbook"


def _text(i: int) -> str:
    # Every file the same length and shape (so the same number of chunks), each with a word of its own.
    body = " ".join(
        f"Section {j} of the travel handbook covers per-diem rates and receipts." for j in range(60)
    )
    return f"Handbook part {i:03d}: marker word zq{i:03d}x.\n\n{body}\n"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, query_embedder: object
) -> Iterator[Cluster]:
    # `query_embedder`: the session's ONNX export exists before any process starts (they share it
    # through RAGSERVER_EMBEDDING__ONNX_CACHE_DIR), so no worker exports it, let alone two at once.
    reachable, detail = _postgres_answers(TEST_POSTGRES_URL)
    require_service("PostgreSQL", reachable, detail)
    llm = ScriptedOpenAIServer(default_reply="Receipts are needed for every claim [1].").start()
    env = {
        "RAGSERVER_LLM__PROVIDER": "openai",
        "RAGSERVER_LLM__BASE_URL": llm.base_url,
        "RAGSERVER_LLM__MODEL": "scripted",
        "RAGSERVER_LLM__MAX_RETRIES": "0",
        # A dead worker's job is taken over after 3 s without a heartbeat (default 30 s).
        "RAGSERVER_JOBS__HEARTBEAT_TIMEOUT_S": "3",
        "RAGSERVER_EMBEDDING__BATCH_SIZE": "16",
        # Documents through the ONNX export: about twice as fast as torch, and the kill is what is tested.
        "RAGSERVER_EMBEDDING__DOCUMENT_BACKEND": "onnx",
        "RAGSERVER_LIMITS__MAX_FILES": "200",
    }
    root = tmp_path_factory.mktemp("cluster")
    c = Cluster(root, postgres_url=TEST_POSTGRES_URL, redis_url=redis_url, env=env)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        llm.stop()


def _wait(predicate, timeout: float, what: str, step: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(step)


def _bm25_finds(api: str, word: str) -> list[str]:
    r = httpx.post(
        f"{api}/v1/retrieve",
        json={"query": word, "collection": COLLECTION, "mode": "bm25", "top_k": 3},
        timeout=30,
    )
    if r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    return [hit["document_id"] for hit in r.json()["results"] if word in hit["text"]]


def _metric(api: str, name: str) -> float:
    text = httpx.get(f"{api}/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_scale_out_scenario(cluster: Cluster) -> None:
    a, b = cluster.api(0), cluster.api(1)

    # Upload through A.
    files = [("files", (f"part-{i:03d}.txt", _text(i).encode())) for i in range(FILES)]
    accepted = httpx.post(f"{a}/v1/collections/{COLLECTION}/documents", files=files, timeout=60)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    ids = {d["filename"]: d["document_id"] for d in accepted.json()["documents"]}

    # Poll through B until a worker is mid-job, then kill -9 that worker.
    def running() -> dict | None:  # type: ignore[type-arg]
        job = httpx.get(f"{b}/v1/jobs/{job_id}", timeout=10).json()
        assert job["status"] in ("queued", "running"), f"finished before the kill: {job['status']}"
        if job["status"] == "running" and job["worker"] and 0 < job["progress"]["done"] < FILES // 2:
            return job  # type: ignore[no-any-return]
        return None

    job = _wait(running, 120, "the job running with files done", step=0.05)
    victim = next(w for w in ("worker-0", "worker-1") if cluster.services[w].pid == job["worker"]["pid"])
    os.kill(cluster.services[victim].pid, signal.SIGKILL)
    cluster.services[victim].proc.wait(10)
    killed_at = job["progress"]["done"]
    killed_pid = cluster.services[victim].pid
    cluster.start_worker(int(victim[-1]))  # back to two workers for the next test

    # Another worker takes the job over once the heartbeat is stale and finishes it.
    def finished() -> dict | None:  # type: ignore[type-arg]
        job = httpx.get(f"{b}/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] not in ("queued", "running") else None  # type: ignore[no-any-return]

    done = _wait(finished, 300, "the job finished after the kill", step=0.2)
    finished_at = time.monotonic()
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2, done
    assert done["worker"]["pid"] != killed_pid
    assert killed_at < FILES

    # Exact counts: every file once, each with the same number of chunks, and the store holds exactly
    # their sum (a duplicate chunk from the killed attempt would show here).
    listing = httpx.get(
        f"{b}/v1/collections/{COLLECTION}/documents", params={"limit": 200}, timeout=30
    ).json()
    assert listing["total"] == FILES
    chunks = {d["document_id"]: d["chunks"] for d in listing["documents"]}
    assert set(chunks) == set(ids.values())
    assert len(set(chunks.values())) == 1 and next(iter(chunks.values())) > 1
    assert sum(f["chunks"] for f in done["files"]) == sum(chunks.values())
    import chromadb

    host, port = cluster.services["chroma"].url.rsplit(":", 1)
    chroma = chromadb.HttpClient(host=host.split("//")[1], port=int(port))
    stored = {
        c.name: c.count() for c in chroma.list_collections() if COLLECTION in c.name and "docs" not in c.name
    }
    assert list(stored.values()) == [sum(chunks.values())], stored

    # BM25 only, on B: the last file's word within 5 s of the job finishing.
    last = ids[f"part-{FILES - 1:03d}.txt"]
    assert _wait(lambda: last in _bm25_finds(b, f"zq{FILES - 1:03d}x"), 5, "BM25 on B finds the new document")
    assert time.monotonic() - finished_at < 5
    assert _metric(b, "ragserver_bm25_full_rebuilds_total") <= 1  # at most its first-load check

    # A chat on B continues on A.
    first = httpx.post(
        f"{b}/v1/chat", json={"message": "Are receipts needed?", "collection": COLLECTION}, timeout=60
    )
    assert first.status_code == 200, first.text
    conversation = first.json()["conversation_id"]
    follow = httpx.post(
        f"{a}/v1/chat",
        json={"message": "And for per-diem?", "collection": COLLECTION, "conversation_id": conversation},
        timeout=60,
    )
    assert follow.status_code == 200, follow.text
    turns = httpx.get(f"{a}/v1/conversations/{conversation}", timeout=10).json()["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]

    # A delete on A disappears from B (BM25 and the document itself) within 5 s.
    gone = ids["part-007.txt"]
    assert gone in _bm25_finds(b, "zq007x")
    assert httpx.delete(f"{a}/v1/collections/{COLLECTION}/documents/{gone}", timeout=30).status_code == 204
    _wait(lambda: gone not in _bm25_finds(b, "zq007x"), 5, "BM25 on B forgets the deleted document")
    assert httpx.get(f"{b}/v1/collections/{COLLECTION}/documents/{gone}", timeout=10).status_code == 404

    # A replica that starts late catches up (its first load checks against the store).
    late = cluster.start_api(2)
    assert ids["part-011.txt"] in _bm25_finds(late, "zq011x")
    assert gone not in _bm25_finds(late, "zq007x")


def test_cancel_and_retry_through_the_queue(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.api(0), cluster.api(1)
    files = [("files", (f"extra-{i:03d}.txt", _text(100 + i).encode())) for i in range(40)]
    files.append(("files", ("broken.pdf", b"%PDF-1.4 not really a pdf")))
    job_id = httpx.post(f"{a}/v1/collections/cancelled/documents", files=files, timeout=60).json()["job_id"]
    cancelled = httpx.post(f"{b}/v1/jobs/{job_id}/cancel", timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert httpx.post(f"{b}/v1/jobs/{job_id}/cancel", timeout=30).status_code == 409

    def settled() -> dict | None:  # type: ignore[type-arg]
        job = httpx.get(f"{a}/v1/jobs/{job_id}", timeout=10).json()
        # Whatever the worker was doing stops: no file stays queued or running.
        return job if all(f["status"] not in ("queued", "running") for f in job["files"]) else None  # type: ignore[no-any-return]

    job = _wait(settled, 30, "the cancelled job settled")
    assert job["status"] == "cancelled"
    assert any(f["status"] == "cancelled" for f in job["files"])

    retried = httpx.post(f"{a}/v1/jobs/{job_id}/retry", timeout=30)
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "queued"

    def finished() -> dict | None:  # type: ignore[type-arg]
        job = httpx.get(f"{b}/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] not in ("queued", "running") else None  # type: ignore[no-any-return]

    final = _wait(finished, 240, "the retried job finished", step=0.3)
    # The stored uploads were kept for the retry: every text file ingests, the broken PDF fails again.
    statuses = {f["filename"]: f["status"] for f in final["files"]}
    assert statuses.pop("broken.pdf") == "failed"
    assert set(statuses.values()) == {"succeeded"}
    assert final["status"] == "partial"
    assert httpx.post(f"{a}/v1/jobs/{job_id}/retry", timeout=30).status_code == 200  # the failed PDF again
