"""Hostile files, names and metadata: each fails alone with its reason, costs bounded memory, and
never takes the job or the server down. Bombs are built here, smaller than in `ragserver bench abuse`
where the behaviour is the same (a lower limit in the settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.bench.abuse import PeakRSS
from app.bench.hostile_files import RLO, malformed_docx, spoofing_filename, write_docx_bomb, write_pdf_bomb
from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.api.conftest import scripted_llm, upload, wait_for_job

pytestmark = pytest.mark.integration

MB = 1024 * 1024
GOOD = b"Mount Etna is an active volcano on the east coast of Sicily."
LIMITS = {
    "max_request_mb": 64,
    "max_files": 4,
    "max_uncompressed_mb": 20,
    "max_compression_ratio": 100,
    "max_extracted_mb": 5,
    "max_metadata_keys": 8,
    "max_metadata_bytes": 512,
    "max_filename_chars": 64,
    "max_list_offset": 1000,
}
MAX_FILE_MB = 30


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, embedder, query_embedder) -> Iterator[TestClient]:
    """One app for the module (each test uses collections of its own), with lowered limits."""
    from app.container import Container
    from app.factory import create_app
    from app.settings import Settings

    with ScriptedOpenAIServer(default_reply="ok [1].") as llm:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=tmp_path_factory.mktemp("hostile") / "data",
            llm=scripted_llm(llm),
            server={"max_upload_mb": MAX_FILE_MB},
            limits=LIMITS,
        )
        container = Container(settings, embedder=embedder, query_embedder=query_embedder)
        with TestClient(create_app(container=container), raise_server_exceptions=False) as client:
            # One ingestion first, so the memory measured later is not the first run's warm-up.
            warm = upload(client, "warmup", {"a.txt": GOOD, "b.docx": malformed_docx()})
            wait_for_job(client, warm.json()["job_id"])
            yield client


def uploads_dir(client: TestClient) -> Path:
    return Path(client.app.state.container.settings.uploads_dir)  # type: ignore[attr-defined]


def job_dirs(client: TestClient) -> set[str]:
    root = uploads_dir(client)
    return {p.name for p in root.iterdir()} if root.exists() else set()


# -- streaming the body straight into the ASGI app --------------------------------------------------

BOUNDARY = "ragserver-test-boundary-7d3f"


def repeat(piece: bytes, size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """`size` bytes of `piece` repeated, produced lazily in chunks (never held whole)."""
    block = (piece * (chunk // len(piece) + 1))[:chunk]
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        yield block[:n]
        sent += n


def multipart(parts: list[tuple[str, str | None, Iterator[bytes]]]) -> Iterator[bytes]:
    """A multipart/form-data body, produced lazily: (field, file name or None, content chunks)."""
    for name, filename, chunks in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        yield f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def stream_upload(
    client: TestClient,
    collection: str,
    body: Iterator[bytes],
    *,
    on_chunk: Callable[[int], None] | None = None,
    headers: dict[str, str] | None = None,
    disconnect_after: int | None = None,
) -> tuple[int, dict[str, Any], dict[str, str], int]:
    """POST a lazily produced body to the app in the client's event loop, one chunk per ASGI receive
    (the TestClient would read the whole body first). Returns status, JSON body, headers and how many
    body bytes the app pulled; status 0 when no answer was sent (the client left after
    `disconnect_after` bytes)."""
    consumed = 0
    sent: list[dict[str, Any]] = []
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal consumed, done
        if done or (disconnect_after is not None and consumed >= disconnect_after):
            return {"type": "http.disconnect"}
        try:
            chunk = next(body)
        except StopIteration:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        if on_chunk is not None:
            on_chunk(consumed)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw_headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})}
    path = f"/v1/collections/{collection}/documents"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in raw_headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def call() -> None:
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    client.portal.call(call)  # type: ignore[union-attr]
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return 0, {}, {}, consumed
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], json.loads(payload), response_headers, consumed


# -- hostile files -----------------------------------------------------------------------------------


def run_job_measured(client: TestClient, collection: str, files: dict[str, bytes]) -> tuple[dict, float]:
    with PeakRSS() as rss:
        response = upload(client, collection, files)
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"], timeout=60)
    return job, rss.rise_mb


def assert_fails_alone(job: dict, bad: str, reason: str) -> None:
    by_name = {f["filename"]: f for f in job["files"]}
    assert job["status"] == "partial", job
    assert by_name["good.txt"]["status"] == "succeeded" and by_name["good.txt"]["chunks"] >= 1
    assert by_name[bad]["status"] == "failed" and reason in (by_name[bad]["error"] or ""), by_name[bad]


def test_docx_bomb_fails_alone_with_bounded_memory(hostile: TestClient, tmp_path: Path) -> None:
    # 200 MB of one text node in word/document.xml, about 200 KB zipped: refused from the central
    # directory before anything is inflated (the 1.1 GB one in `bench abuse` takes the same path).
    bomb = write_docx_bomb(tmp_path / "bomb.docx", 200).read_bytes()
    assert len(bomb) < 300_000
    job, rise = run_job_measured(hostile, "docxbomb", {"bomb.docx": bomb, "good.txt": GOOD})
    assert_fails_alone(job, "bomb.docx", "limits.max_compression_ratio")
    assert rise < 100, f"RSS rose {rise:.0f} MB"


def test_docx_over_the_uncompressed_limit_is_refused(tmp_path: Path) -> None:
    from ingest.safety import LoadLimits, UnsafeFile, check_zip

    bomb = write_docx_bomb(tmp_path / "bomb.docx", 30)
    limits = LoadLimits(max_uncompressed_bytes=20 * MB, max_compression_ratio=10_000)
    with pytest.raises(UnsafeFile, match="limits.max_uncompressed_mb"):
        check_zip(bomb, bomb.stat().st_size, limits)
    check_zip(
        bomb, bomb.stat().st_size, LoadLimits(max_uncompressed_bytes=40 * MB, max_compression_ratio=10_000)
    )


def test_pdf_stream_bomb_fails_alone_with_bounded_memory(hostile: TestClient, tmp_path: Path) -> None:
    # A content stream inflating to 100 MB: pypdf stops at limits.max_extracted_mb (5 MB here).
    bomb = write_pdf_bomb(tmp_path / "bomb.pdf", 100).read_bytes()
    job, rise = run_job_measured(hostile, "pdfbomb", {"bomb.pdf": bomb, "good.txt": GOOD})
    assert_fails_alone(job, "bomb.pdf", "limits.max_extracted_mb")
    assert rise < 100, f"RSS rose {rise:.0f} MB"


def test_malformed_docx_fails_alone(hostile: TestClient) -> None:
    job, _ = run_job_measured(hostile, "baddocx", {"broken.docx": malformed_docx(), "good.txt": GOOD})
    assert_fails_alone(job, "broken.docx", "XMLSyntaxError")


# -- uploads stream to disk under limits ------------------------------------------------------------


def test_upload_streams_to_disk_with_flat_memory(hostile: TestClient) -> None:
    """Two 28 MB files: written while the body arrives (a .part file grows before the request ends),
    and the process's memory does not grow with the upload. In the job, each is over the 5 MB text
    cap (limits.max_extracted_mb) and fails with that reason."""
    seen_on_disk: list[int] = []
    root = uploads_dir(hostile)

    def watch(consumed: int) -> None:
        if consumed > 20 * MB and not seen_on_disk:
            seen_on_disk.extend(p.stat().st_size for p in root.glob("*/*.part"))

    body = multipart(
        [
            ("files", "one.txt", repeat(b"alpha beta gamma ", 28 * MB)),
            ("files", "two.txt", repeat(b"delta epsilon zeta ", 28 * MB)),
        ]
    )
    with PeakRSS() as rss:
        status, answer, _, consumed = stream_upload(hostile, "streamed", body, on_chunk=watch)
    assert status == 202, answer
    assert consumed > 56 * MB
    assert seen_on_disk and max(seen_on_disk) > 10 * MB, seen_on_disk
    assert rss.rise_mb < 20, f"RSS rose {rss.rise_mb:.0f} MB for a 56 MB upload"
    stored = sorted(p.stat().st_size for p in (root / answer["job_id"]).iterdir())
    assert stored == [28 * MB, 28 * MB]
    job = wait_for_job(hostile, answer["job_id"], timeout=60)
    assert job["status"] == "failed"
    assert all("limits.max_extracted_mb" in f["error"] for f in job["files"]), job["files"]


@pytest.mark.parametrize(
    ("parts", "limit"),
    [
        ([("files", "big.txt", (MAX_FILE_MB + 8) * MB)], "server.max_upload_mb"),
        ([("files", f"p{i}.txt", 25 * MB) for i in range(3)], "limits.max_request_mb"),
    ],
    ids=["file", "request"],
)
def test_size_limits_abort_while_streaming(hostile: TestClient, parts: list, limit: str) -> None:
    before = job_dirs(hostile)
    total = sum(size for _, _, size in parts)
    body = multipart([(field, name, repeat(b"x", size)) for field, name, size in parts])
    status, answer, _, consumed = stream_upload(hostile, "limits", body)
    assert status == 413 and answer["error"]["code"] == "upload_too_large"
    assert limit in answer["error"]["message"]
    # Refused once past the limit, not after the whole body: at most a chunk more was read.
    cap = MAX_FILE_MB * MB if limit.startswith("server") else LIMITS["max_request_mb"] * MB
    assert consumed < cap + MB < total
    assert job_dirs(hostile) == before  # the partial files are gone


def test_a_client_leaving_mid_upload_leaves_nothing(hostile: TestClient) -> None:
    before = job_dirs(hostile)
    body = multipart([("files", "a.txt", repeat(b"abc ", 20 * MB))])
    status, _, _, consumed = stream_upload(hostile, "gone", body, disconnect_after=5 * MB)
    assert status == 0 and consumed < 6 * MB
    assert job_dirs(hostile) == before


def test_too_many_files_are_refused(hostile: TestClient) -> None:
    before = job_dirs(hostile)
    files = {f"f{i}.txt": b"tiny %d" % i for i in range(LIMITS["max_files"] + 1)}
    response = upload(hostile, "many", files)
    assert response.status_code == 413 and "limits.max_files" in response.json()["error"]["message"]
    assert job_dirs(hostile) == before


def test_declared_length_over_the_limit_is_refused_before_reading(hostile: TestClient) -> None:
    body = multipart([("files", "a.txt", repeat(b"x", 10 * MB))])
    declared = str(LIMITS["max_request_mb"] * MB + 1)
    status, answer, _, consumed = stream_upload(
        hostile, "declared", body, headers={"content-length": declared}
    )
    assert status == 413 and "limits.max_request_mb" in answer["error"]["message"]
    assert consumed == 0


def test_mislabelled_type_is_refused_from_the_first_bytes(hostile: TestClient) -> None:
    before = job_dirs(hostile)
    body = multipart([("files", "fake.pdf", repeat(b"just text, not a PDF ", 20 * MB))])
    status, answer, _, consumed = stream_upload(hostile, "mislabel", body)
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"
    assert consumed < MB
    assert job_dirs(hostile) == before


# -- names --------------------------------------------------------------------------------------------


def test_file_names_are_cleaned_for_display_and_kept_in_the_record(hostile: TestClient) -> None:
    hostile_name = spoofing_filename(5000)
    response = upload(
        hostile, "names", {hostile_name: b"A document with a hostile file name.", "good.txt": GOOD}
    )
    assert response.status_code == 202, response.text
    accepted = {d["filename"]: d["document_id"] for d in response.json()["documents"]}
    shown = next(name for name in accepted if name != "good.txt")
    assert len(shown) <= LIMITS["max_filename_chars"] and shown.endswith(".txt")
    assert RLO not in shown and shown.endswith("\u2026.txt") and shown.startswith("xxx")
    job = wait_for_job(hostile, response.json()["job_id"])
    assert job["status"] == "succeeded"
    [record] = [f for f in job["files"] if f["filename"] == shown]
    assert record["original_filename"] == hostile_name
    doc = hostile.get(f"/v1/collections/names/documents/{accepted[shown]}").json()
    assert doc["source"] == shown and RLO not in doc["title"] and len(doc["title"]) <= 64
    assert doc["metadata"]["filename"] == shown and doc["metadata"]["original_filename"] == hostile_name
    # The original name is kept in the record, not copied onto every chunk.
    hits = hostile.post("/v1/retrieve", json={"query": "hostile file name", "collection": "names"}).json()
    hit = next(h for h in hits["results"] if h["document_id"] == accepted[shown])
    assert "original_filename" not in hit["metadata"] and RLO not in json.dumps(hit, ensure_ascii=False)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("report.pdf", "report.pdf"),
        (f"invoice{RLO}fdp.exe", "invoicefdp.exe"),
        ("a\u2066b\u2069c\u200e\u200f.txt", "abc.txt"),
        ("line\nbreak\ttab\x00.md", "line break tab.md"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\notes.txt", "notes.txt"),
        ("\u202e", "upload"),
        ("x" * 300 + ".docx", "x" * 58 + "\u2026.docx"),
    ],
)
def test_display_filename_rules(raw: str, shown: str) -> None:
    from ingest.safety import display_filename

    assert display_filename(raw, 64) == shown


# -- metadata -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        {"$where": 1},
        {"": "empty"},
        {"#document": "x"},
        {"source": "spoofed.pdf"},
        {"doc_id": "other"},
        {"version": "v9"},
        {"format": "pdf"},
        {"filename": "other.txt"},
        {"original_filename": "x"},
        {"document_id": "x"},
        {"bad key": 1},
        {"nested": {"a": 1}},
        {"list": [1, 2]},
        {"null": None},
        {"big": 2**70},
        {f"k{i}": i for i in range(LIMITS["max_metadata_keys"] + 1)},
        {"long": "x" * 600},
        {f"k{i}": i for i in range(5000)},
        [1, 2],
    ],
    ids=lambda m: str(m)[:30],
)
def test_bad_metadata_is_refused_before_anything_is_stored(hostile: TestClient, metadata: Any) -> None:
    before = job_dirs(hostile)
    response = upload(hostile, "meta", {"a.txt": GOOD}, metadata=json.dumps(metadata))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_metadata"
    assert job_dirs(hostile) == before
    assert hostile.get("/v1/collections/meta/documents").status_code == 404


def test_nan_metadata_is_refused(hostile: TestClient) -> None:
    response = upload(hostile, "meta", {"a.txt": GOOD}, metadata='{"score": NaN}')
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_metadata"


def test_metadata_after_the_files_is_checked_and_the_files_removed(hostile: TestClient) -> None:
    before = job_dirs(hostile)
    body = multipart([("files", "a.txt", iter([GOOD])), ("metadata", None, iter([b'{"$where": 1}']))])
    status, answer, _, _ = stream_upload(hostile, "meta", body)
    assert status == 400 and answer["error"]["code"] == "invalid_metadata"
    assert job_dirs(hostile) == before


def test_good_metadata_reaches_documents_and_chunks(hostile: TestClient) -> None:
    meta = {"team": "geo", "year": 2021, "score": 0.5, "public": True, "dept.code": "A-1"}
    response = upload(hostile, "goodmeta", {"a.txt": GOOD}, metadata=json.dumps(meta))
    assert response.status_code == 202, response.text
    assert wait_for_job(hostile, response.json()["job_id"])["status"] == "succeeded"
    [doc] = hostile.get("/v1/collections/goodmeta/documents").json()["documents"]
    assert {k: doc["metadata"][k] for k in meta} == meta and doc["metadata"]["format"] == "text"


# -- collection names and pagination -----------------------------------------------------------------


def test_internal_collection_names_never_collide(hostile: TestClient) -> None:
    """`hr__docs` used to be `hr`'s records collection, and `fin__docs` made before `fin` broke `fin`."""
    for name, text in [
        ("hr", GOOD),
        ("hr__docs", b"Penguins breed in the Antarctic winter."),
        ("fin__docs", b"Quarterly revenue grew by forty percent."),
        ("fin", b"The budget for solar panels doubled."),
    ]:
        response = upload(hostile, name, {f"{name}.txt": text})
        assert response.status_code == 202, response.text
        assert wait_for_job(hostile, response.json()["job_id"])["status"] == "succeeded", name
    for name in ("hr", "hr__docs", "fin", "fin__docs"):
        listing = hostile.get(f"/v1/collections/{name}/documents").json()
        assert [d["source"] for d in listing["documents"]] == [f"{name}.txt"], name
        retrieved = hostile.post("/v1/retrieve", json={"query": "what happened", "collection": name})
        assert retrieved.status_code == 200, retrieved.text
        assert {h["source"] for h in retrieved.json()["results"]} == {f"{name}.txt"}


def test_records_stored_under_the_legacy_name_are_migrated(tmp_path: Path) -> None:
    """A data dir from before: `rs_hr` chunks and `rs_hr__docs` records, beside the chunks and records
    of a collection `ops__docs`. Opening it keeps every collection, and `hr__docs` can be created."""
    import chromadb
    import numpy as np
    from chromadb.config import Settings as ChromaSettings

    from ingest.chroma_index import ChromaIndex
    from ingest.types import Chunk
    from ingest.vector_index import DocumentRecord

    path = str(tmp_path / "chroma")
    raw = chromadb.PersistentClient(path=path, settings=ChromaSettings(anonymized_telemetry=False))
    for user in ("hr", "ops__docs"):
        chunks = raw.get_or_create_collection(
            f"rs_{user}", metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        chunks.upsert(
            ids=[f"{user}-doc::v1::0"],
            embeddings=[[1.0, 0.0]],
            documents=[f"text of {user}"],
            metadatas=[{"doc_id": f"{user}-doc", "version": "v1", "chunk_index": 0}],
        )
        records = raw.get_or_create_collection(
            f"rs_{user}__docs", metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        record = DocumentRecord(f"{user}-doc", f"{user}.txt", user, "hash", "v1", 1, 1.0, {"team": user})
        records.upsert(ids=[record.doc_id], embeddings=[[1.0]], metadatas=[record.to_row()])
    raw.get_or_create_collection("rs_empty", embedding_function=None)
    raw.get_or_create_collection("rs_empty__docs", embedding_function=None)
    del raw

    index = ChromaIndex.open(url=None, path=path)
    assert index.list_collections() == ["empty", "hr", "ops__docs"]
    for user in ("hr", "ops__docs"):
        assert index.get_documents(user, [f"{user}-doc"])[f"{user}-doc"].metadata == {"team": user}
        assert index.count_chunks(user) == 1 and index.count_documents(user) == 1
    index.ensure_collection("hr__docs")
    index.upsert_chunks(
        "hr__docs", [Chunk("n::v1::0", "n", "new", {"doc_id": "n", "version": "v1"})], np.array([[0.0, 1.0]])
    )
    assert index.count_chunks("hr__docs") == 1 and index.count_chunks("hr") == 1
    assert ChromaIndex.open(url=None, path=path).migrate() == []  # idempotent


def test_collection_name_with_a_newline_is_refused(hostile: TestClient) -> None:
    response = hostile.post("/v1/collections/nl%0A/documents", files=[("files", ("a.txt", GOOD))])
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_collection_name"
    assert hostile.get("/v1/collections/nl%0A/documents").status_code == 400


def test_list_offset_is_bounded(hostile: TestClient) -> None:
    assert (
        wait_for_job(hostile, upload(hostile, "pages", {"a.txt": GOOD}).json()["job_id"])["status"]
        == "succeeded"
    )
    for offset in ("99999999999999999999", str(LIMITS["max_list_offset"] + 1)):
        response = hostile.get("/v1/collections/pages/documents", params={"offset": offset})
        assert response.status_code == 400, response.text
        assert "limits.max_list_offset" in response.json()["error"]["message"]
    ok = hostile.get("/v1/collections/pages/documents", params={"offset": LIMITS["max_list_offset"]})
    assert ok.status_code == 200 and ok.json()["documents"] == []


# -- the benchmark ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_abuse_runs_the_small_cases(tmp_path: Path) -> None:
    """The CLI against a real server process: the cases that need no big files."""
    repo = Path(__file__).resolve().parents[2]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RAGSERVER_") or k.endswith("ONNX_CACHE_DIR")
    }
    env["RAGSERVER_LIMITS__BODY_TIMEOUT_S"] = "2"  # the slow flood ends sooner
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli.main",
            "bench",
            "abuse",
            "--cases",
            "malformed_docx,long_rtl_name,too_many_files,bad_metadata,colliding_names,filter_bomb,"
            "slow_upload_flood",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    cases = {c["case"]: c for c in json.loads(result.stdout.strip().splitlines()[-1])["cases"]}
    assert cases["malformed_docx"]["statuses"] == [202]
    assert [f["status"] for f in cases["malformed_docx"]["jobs"][0]["files"]] == ["failed", "succeeded"]
    assert cases["long_rtl_name"]["jobs"][0]["files"][0]["filename_chars"] <= 200
    assert cases["long_rtl_name"]["checks"] == {"offset 1e20": 400, "collection 'nl\\n'": 400}
    assert cases["too_many_files"]["statuses"] == [413]
    assert set(cases["bad_metadata"]["statuses"]) == {400}
    assert cases["colliding_names"]["statuses"] == [202] * 4
    assert set(cases["filter_bomb"]["statuses"]) == {400} and len(cases["filter_bomb"]["statuses"]) == 15
    assert cases["filter_bomb"]["checks"] == {"healthz": 200}
    flood = cases["slow_upload_flood"]
    assert flood["checks"]["other_tenant_upload"] == 202 and flood["jobs"][0]["status"] == "succeeded"
    assert sorted(set(flood["statuses"])) == [408, 429] and flood["statuses"].count(408) == 8
    assert set(cases["colliding_names"]["checks"].values()) == {200}
