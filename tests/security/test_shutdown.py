"""The real server process (`python -m app.cli.main serve`) stopped mid-generation: SIGKILL loses nothing
already committed and the server comes back and serves; SIGTERM exits within 10 s (running requests get
server.shutdown_timeout_s, then are cancelled with their generations and answered 503). Its logs are JSON
lines with the request id (`--log-format json`), the app's INFO lines and uvicorn's access log included.

One test, two server starts (each loads the embedder): the restarted server is the one sent SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.live_server import Process, llm_env, serve_process
from tests.security.chat_server import ETNA, build_container, ingest, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ANSWER = "Etna is in Sicily [1]."


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(default_reply=ANSWER) as server:
        yield server


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, embedder, query_embedder, llm) -> Path:
    """A data dir with the knowledge base ingested (in this process, before any server opens it)."""
    root = tmp_path_factory.mktemp("shutdown")
    container = build_container(root / "data", embedder, query_embedder, llm)
    ingest(container, root / "kb")
    return root / "data"


@contextmanager
def server_process(data_dir: Path, llm: ScriptedOpenAIServer, *args: str) -> Iterator[Process]:
    """`python -m app.cli.main serve` on a free port, ready; killed at the end if still running."""
    env = llm_env(llm) | {"RAGSERVER_SERVER__DEFAULT_COLLECTION": "kb"}
    with serve_process(data_dir, env, *args) as proc:
        yield proc


def in_background(fn, *args) -> threading.Thread:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


def test_sigkill_then_restart_serves_then_sigterm_mid_generation_exits_within_10_seconds(
    data_dir: Path, llm: ScriptedOpenAIServer
) -> None:
    outcomes: list[object] = []

    def ask(url: str, path: str, body: dict) -> None:  # type: ignore[type-arg]
        try:
            response = httpx.post(f"{url}{path}", json=body, timeout=30)
            outcomes.append((response.status_code, response.json()["error"]["code"]))
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)

    # SIGKILL mid-generation: what was committed stays.
    with server_process(data_dir, llm) as first:
        saved = httpx.post(f"{first.url}/v1/chat", json={"message": ETNA}, timeout=30).json()
        assert saved["history_saved"] is True
        asked = len(llm.requests)
        llm.enqueue_delay(60)
        in_background(ask, first.url, "/v1/chat", {"message": "Is it active?"})
        wait_until(lambda: len(llm.requests) == asked + 1, timeout=20)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)

    # The server comes back on the same data and serves; its logs are JSON lines.
    with server_process(data_dir, llm, "--log-format", "json", "--limit-concurrency", "3") as second:
        assert httpx.get(f"{second.url}/readyz", timeout=30).status_code == 200
        turns = httpx.get(f"{second.url}/v1/conversations/{saved['conversation_id']}").json()["turns"]
        assert [t["content"] for t in turns] == [ETNA, ANSWER]
        again = httpx.post(
            f"{second.url}/v1/chat",
            json={"message": "Is it active?", "conversation_id": saved["conversation_id"]},
            headers={"X-Request-ID": "log-check-1"},
            timeout=30,
        )
        assert again.status_code == 200 and again.json()["history_saved"] is True

        # SIGTERM with two generations in flight (the upstream answering in a minute): a JSON request
        # and a stream still before its first token.
        outcomes.clear()
        asked = len(llm.requests)
        llm.enqueue_delay(60)
        llm.enqueue_delay(60)
        threads = [
            in_background(ask, second.url, "/v1/chat", {"message": ETNA}),
            in_background(
                ask,
                second.url,
                "/v1/chat/completions",
                {"model": "kb", "stream": True, "messages": [{"role": "user", "content": ETNA}]},
            ),
        ]
        wait_until(lambda: len(llm.requests) == asked + 2, timeout=20)
        # uvicorn's concurrency limit (3 with this one): a third connection is turned away at once.
        assert httpx.get(f"{second.url}/healthz", timeout=5).status_code == 503
        started = time.monotonic()
        second.proc.send_signal(signal.SIGTERM)
        second.proc.wait(timeout=15)
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"exit took {elapsed:.1f}s"
        for thread in threads:
            thread.join(10)
        # Cancelled after server.shutdown_timeout_s (5 s), each told so: not left hanging, not a bare 500.
        assert outcomes == [(503, "shutting_down")] * 2

        entries = [json.loads(line) for line in second.log_lines() if line.startswith("{")]
        assert {"time", "level", "logger", "message", "request_id"} <= set(entries[0])
        assert any(e["logger"] == "app.factory" and "ready" in e["message"] for e in entries)
        tagged = [e for e in entries if e["request_id"] == "log-check-1"]
        assert any(e["logger"] == "app.services.chat_service" and e["level"] == "INFO" for e in tagged)
        access = [e for e in tagged if e["logger"] == "uvicorn.access"]
        assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/chat"
