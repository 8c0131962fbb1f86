"""Blue/green collections: rebuild into a new version (another model, other chunking) while the old one
serves, switch, roll back, prune; every answer names the version that answered and never mixes two."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.services.collection_versions import _merge
from tests.api.conftest import scripted_llm, upload, wait_for_job
from tests.conftest import free_port
from tests.live_server import live_server

TOPICS = [
    ("etna", "Mount Etna is an active stratovolcano on the east coast of Sicily, in Italy."),
    ("glacier", "The Aletsch Glacier is the largest glacier in the Alps, in the canton of Valais."),
    ("reef", "The Great Barrier Reef lies off the coast of Queensland in north-eastern Australia."),
    ("desert", "The Atacama Desert in northern Chile is one of the driest places on Earth."),
    ("river", "The Danube flows through ten countries before it reaches the Black Sea."),
]


def _document(topic: str, lead: str) -> bytes:
    body = " ".join(
        f"{lead} Fact {i} about the {topic}: observers recorded measurement {i * 7} in season {i % 4}."
        for i in range(40)
    )
    return body.encode()


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another embedding model directory (the packaged weights under another name: another model id)."""
    from ingest.embedder import packaged_model_dir

    target = tmp_path_factory.mktemp("models") / "minilm-copy"
    shutil.copytree(packaged_model_dir(), target)
    return target


@pytest.fixture
def bg(make_container, llm_server, model_copy):
    """(client, container) of an app whose collection `kb` holds five documents (version 1); rebuilds
    may use `model_copy` (its directory is a model root)."""
    from app.factory import create_app

    container = make_container(
        llm=scripted_llm(llm_server),
        embedding={"query_backend": "torch"},
        collections={"alias_ttl_s": 0.2, "model_roots": [str(model_copy.parent)]},
    )
    with TestClient(create_app(container=container), raise_server_exceptions=False) as client:
        job = upload(client, "kb", {f"{t}.txt": _document(t, lead) for t, lead in TOPICS}).json()
        assert wait_for_job(client, job["job_id"])["status"] == "succeeded"
        yield client, container


def _wait_state(client: TestClient, collection: str, version: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"/v1/collections/{collection}/versions").json()
        row = next(v for v in data["versions"] if v["version"] == version)
        if row["state"] != "building":
            return data
        time.sleep(0.2)
    raise AssertionError(f"v{version} still building after {timeout}s")


def test_merge_writes_each_overlap_once():
    assert _merge(["alpha beta gamma delta", "gamma delta epsilon zeta", "epsilon zeta eta"]) == (
        "alpha beta gamma delta epsilon zeta eta"
    )
    assert _merge(["no overlap here.", "Another sentence."]) == "no overlap here. Another sentence."


def test_rebuild_from_chunks_gives_the_documents_back(make_container):
    """A document rebuilt from its overlapping chunks re-chunks to the same chunks."""
    from ingest.loaders import load_bytes

    container = make_container(
        embedding={"query_backend": "torch"}, chunking={"chunk_size": 64, "chunk_overlap": 16}
    )
    doc = load_bytes(_document("etna", TOPICS[0][1]), "etna.txt", doc_id="etna", source="etna.txt")
    assert not hasattr(doc, "error")
    container.pipeline.ingest([doc], "kb")
    record = container.store.get_documents("kb", ["etna"])["etna"]
    assert record.chunks > 3
    rebuilt = container.versions.source_document("kb", record)
    assert rebuilt is not None
    assert rebuilt.content_hash == record.content_hash  # the original's: re-uploading it is a no-op
    assert [c.text for c in container.chunker.chunk(rebuilt, version="x", ingested_at=0)] == [
        c.text for c in container.chunker.chunk(doc, version="x", ingested_at=0)
    ]


def test_rebuild_with_another_model_switches_rolls_back_and_prunes(bg, model_copy, llm_server):
    client, container = bg
    first = client.post("/v1/retrieve", json={"collection": "kb", "query": "volcano in Sicily"}).json()
    assert first["collection_version"] == "v1"
    v1_chunks = {r["chunk_id"] for r in first["results"]}

    response = client.post("/v1/collections/kb/rebuild", json={"embedding_model": str(model_copy)})
    assert response.status_code == 202, response.text
    started = response.json()
    assert started["version"] == 2 and started["state"] == "building"
    data = _wait_state(client, "kb", 2)
    by_version = {v["version"]: v for v in data["versions"]}
    assert data["active"] == "v2"
    assert by_version[2]["state"] == "ready" and by_version[2]["embedding_model"] == str(model_copy)
    assert by_version[2]["documents"] == 5 and by_version[1]["state"] == "ready"

    after = client.post("/v1/retrieve", json={"collection": "kb", "query": "volcano in Sicily"}).json()
    assert after["collection_version"] == "v2"
    assert after["results"][0]["text"].startswith("Mount Etna")
    assert not v1_chunks & {r["chunk_id"] for r in after["results"]}  # another model: other chunk ids

    chat = client.post("/v1/chat", json={"collection": "kb", "message": "Where is Etna?"}).json()
    assert chat["collection_version"] == "v2"
    trace = client.get(f"/v1/responses/{chat['response_id']}").json()
    assert trace["collection_version"] == "v2"

    # The document API sees the serving version; a re-upload of an unchanged file is still a no-op.
    listing = client.get("/v1/collections/kb/documents").json()
    assert listing["total"] == 5
    job = upload(client, "kb", {"etna.txt": _document("etna", TOPICS[0][1])}).json()
    assert wait_for_job(client, job["job_id"])["files"][0]["status"] == "skipped"
    # A new upload goes to v2, embedded with v2's model.
    job = upload(
        client, "kb", {"lake.txt": b"Lake Baikal in Siberia is the deepest lake in the world."}
    ).json()
    assert wait_for_job(client, job["job_id"])["status"] == "succeeded"
    hit = client.post("/v1/retrieve", json={"collection": "kb", "query": "deepest lake"}).json()
    assert hit["collection_version"] == "v2" and "Baikal" in hit["results"][0]["text"]

    rolled = client.post("/v1/collections/kb/rollback")
    assert rolled.status_code == 200 and rolled.json()["label"] == "v1"
    assert (
        client.post("/v1/retrieve", json={"collection": "kb", "query": "x"}).json()["collection_version"]
        == "v1"
    )
    forward = client.post("/v1/collections/kb/rollback", json={"version": 2}).json()
    assert forward["label"] == "v2"

    pruned = client.post("/v1/collections/kb/prune").json()
    assert pruned["pruned"] == ["v1"]
    versions = client.get("/v1/collections/kb/versions").json()["versions"]
    assert [(v["label"], v["state"]) for v in versions] == [("v1", "pruned"), ("v2", "ready")]
    assert not container.store.has_collection("kb")  # v1's physical collection is gone
    assert (
        client.post("/v1/retrieve", json={"collection": "kb", "query": "x"}).json()["collection_version"]
        == "v2"
    )
    assert "kb" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.post("/v1/collections/kb/rollback").status_code == 409  # nothing ready to go back to
    audit = [e["action"] for e in client.get("/v1/admin/audit").json()["entries"]]
    assert {"collection.rebuild", "collection.rollback", "collection.prune"} <= set(audit)


def test_rebuild_refusals(bg, tmp_path):
    client, _ = bg
    assert client.post("/v1/collections/nope/rebuild").status_code == 404
    assert client.get("/v1/collections/nope/versions").status_code == 404
    bad = client.post("/v1/collections/kb/rebuild", json={"embedding_model": str(tmp_path / "missing")})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_embedding_model"
    assert "missing" not in bad.text
    # A directory outside collections.model_roots: the same answer (tests/security/test_model_paths.py).
    outside = client.post("/v1/collections/kb/rebuild", json={"embedding_model": str(tmp_path)})
    assert (outside.status_code, outside.json()["error"]["message"]) == (400, bad.json()["error"]["message"])
    assert (
        client.post("/v1/collections/kb/rebuild", json={"chunk_size": 64, "chunk_overlap": 64}).status_code
        == 422
    )
    assert client.post("/v1/collections/kb/rebuild", json={"surprise": 1}).status_code == 422
    only = client.post("/v1/collections/kb/rollback")
    assert only.status_code == 409 and only.json()["error"]["code"] == "version_conflict"
    assert client.post("/v1/collections/kb/rollback", json={"version": 9}).status_code == 409
    assert client.post("/v1/collections/kb--v2/documents").status_code == 400  # reserved names
    assert client.get("/v1/collections/kb/versions").json()["versions"][0]["documents"] == 5

    started = client.post("/v1/collections/kb/rebuild", json={"chunk_size": 64, "chunk_overlap": 8})
    assert started.status_code == 202
    again = client.post("/v1/collections/kb/rebuild")
    assert again.status_code == 409 and "already running" in again.json()["error"]["message"]
    data = _wait_state(client, "kb", 2)
    v2 = next(v for v in data["versions"] if v["version"] == 2)
    assert data["active"] == "v2" and v2["chunk_size"] == 64 and v2["chunks"] > 5


def test_chat_under_load_during_rebuild_never_fails_or_mixes_versions(make_container, llm_server, model_copy):
    """Chats keep arriving while the collection is rebuilt: none fails, and every answer's chunks all
    belong to the one version it names."""
    from app.factory import create_app

    container = make_container(
        llm=scripted_llm(llm_server),
        embedding={"query_backend": "torch"},
        collections={"alias_ttl_s": 0.2, "model_roots": [str(model_copy.parent)]},
    )
    app = create_app(container=container)
    with live_server(app, free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        files = [
            ("files", (f"{t}-{i}.txt", _document(f"{t}{i}", lead))) for t, lead in TOPICS for i in range(6)
        ]
        for part in (files[:15], files[15:]):  # at most limits.max_files (20) a request
            job = http.post("/v1/collections/kb/documents", files=part).json()
            deadline = time.monotonic() + 300
            while http.get(f"/v1/jobs/{job['job_id']}").json()["status"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.3)

        answers: list[dict] = []
        failures: list[str] = []
        stop = threading.Event()

        def chat_loop(n: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as own:
                i = 0
                while not stop.is_set():
                    r = own.post(
                        "/v1/chat", json={"collection": "kb", "message": f"{TOPICS[(n + i) % 5][0]}?"}
                    )
                    i += 1
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        answers.append(r.json())

        threads = [threading.Thread(target=chat_loop, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            assert (
                http.post("/v1/collections/kb/rebuild", json={"embedding_model": str(model_copy)}).status_code
                == 202
            )
            deadline = time.monotonic() + 300
            while True:
                data = http.get("/v1/collections/kb/versions").json()
                if data["active"] == "v2":
                    break
                assert time.monotonic() < deadline, data
                time.sleep(0.3)
            time.sleep(2.0)  # answers after the switch
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)

        assert failures == []
        seen = {a["collection_version"] for a in answers}
        assert seen == {"v1", "v2"}, seen
        ids = {
            "v1": container.store.chunk_ids("kb"),
            "v2": container.store.chunk_ids("kb--v2"),
        }
        for answer in answers:
            trace = http.get(f"/v1/responses/{answer['response_id']}").json()
            chunks = {c["chunk_id"] for c in trace["chunks"]}
            assert chunks and chunks <= ids[answer["collection_version"]], answer["collection_version"]


def test_registry_down_keeps_the_last_seen_version_and_refuses_the_unknown(make_container):
    """With the database unreachable, a collection keeps its last resolved version; one never
    resolved is a 503 (Unavailable), not a guess."""
    import sqlalchemy as sa

    from app.services.collection_versions import CollectionVersions, VersionRegistry
    from app.services.errors import Unavailable

    container = make_container(embedding={"query_backend": "torch"})

    class Down(VersionRegistry):
        down = False

        def active(self, collection):  # type: ignore[no-untyped-def]
            if self.down:
                raise sa.exc.OperationalError("select", {}, Exception("connection refused"))
            return super().active(collection)

    registry = Down(container.database)
    versions = CollectionVersions(
        container.store, registry, container.pipeline_for, container.retriever_for, alias_ttl_s=0.0
    )
    assert versions.resolve("kb").label == "v1"
    registry.down = True
    assert versions.resolve("kb").physical == "kb"  # last seen
    with pytest.raises(Unavailable):
        versions.resolve("other")
