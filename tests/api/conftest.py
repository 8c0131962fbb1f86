"""An app wired to a scripted OpenAI-compatible LLM on loopback, real embedder, real Chroma, SQLite."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.devtools.scripted_llm import ScriptedOpenAIServer


@pytest.fixture
def llm_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(default_reply="Etna is in Sicily [1].") as server:
        yield server


def scripted_llm(server: ScriptedOpenAIServer) -> dict[str, object]:
    """LLM settings that point the app at a scripted server, failing fast (no retries)."""
    return {"provider": "openai", "base_url": server.base_url, "model": server.model, "max_retries": 0}


@pytest.fixture
def client(make_container, llm_server) -> Iterator[TestClient]:
    from app.factory import create_app

    container = make_container(llm=scripted_llm(llm_server), server={"max_upload_mb": 0.05})
    with TestClient(create_app(container=container), raise_server_exceptions=False) as test_client:
        yield test_client


def wait_for_job(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def upload(client: TestClient, collection: str, files: dict[str, bytes], metadata: str | None = None):
    data = {"metadata": metadata} if metadata is not None else {}
    return client.post(
        f"/v1/collections/{collection}/documents",
        files=[("files", (name, content)) for name, content in files.items()],
        data=data,
    )
