"""Faults in what the server depends on, with the real service behind a switchable TCP proxy: a Redis
history store that refuses or hangs, a Chroma server that hangs. Nothing hangs a request, and an answer
is never generated and then lost.

The history-store-down policy: a follow-up whose history cannot be read is refused with 503 (Retry-After,
`history_unavailable`) before the LLM runs; a new question is answered and returned with
`"history_saved": false` when the history write fails.
"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import free_port
from tests.live_server import live_server
from tests.security.chat_server import ETNA, build_container, ingest, sse_events
from tests.security.conftest import TcpProxy

pytestmark = pytest.mark.integration

ANSWER = "Etna is in Sicily [1]."


@pytest.fixture
def redis_served(tmp_path, embedder, query_embedder, redis_proxy: TcpProxy, redis_key_prefix: str):  # type: ignore[no-untyped-def]
    """A server whose history is the test Redis behind a proxy (`proxy.set("refuse" | "hang" | "up")`)."""
    from app.devtools.scripted_llm import ScriptedOpenAIServer
    from app.factory import create_app

    history = {"redis_url": redis_proxy.url("redis", "/0"), "key_prefix": redis_key_prefix, "timeout_s": 1.0}
    with ScriptedOpenAIServer(default_reply=ANSWER) as llm:
        container = build_container(tmp_path / "data", embedder, query_embedder, llm, history=history)
        ingest(container, tmp_path / "kb")
        with live_server(create_app(container=container), free_port()) as url:
            yield url, redis_proxy, llm


def chat(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat", json={"message": ETNA, **body}, timeout=30)


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_history_store_down_never_loses_an_answer_nor_hangs_a_request(redis_served, mode: str) -> None:
    url, proxy, llm = redis_served
    first = chat(url)
    assert first.status_code == 200 and first.json()["history_saved"] is True
    conversation = first.json()["conversation_id"]

    proxy.set(mode)
    asked = len(llm.requests)
    started = time.monotonic()
    # A follow-up needs its history: refused before the LLM is asked, with a hint to retry.
    follow_up = chat(url, message="Is it active?", conversation_id=conversation)
    assert follow_up.status_code == 503, follow_up.text
    assert follow_up.json()["error"]["code"] == "history_unavailable"
    assert int(follow_up.headers["Retry-After"]) > 0
    assert len(llm.requests) == asked
    assert httpx.get(f"{url}/v1/conversations/{conversation}", timeout=30).status_code == 503

    # A new question is answered; the answer is returned, marked as not saved.
    fresh = chat(url)
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["answer"] == ANSWER and fresh.json()["history_saved"] is False
    with httpx.stream("POST", f"{url}/v1/chat", json={"message": ETNA, "stream": True}, timeout=30) as r:
        events = list(sse_events(r.iter_lines()))
    assert events[-1][0] == "done" and events[-1][1]["history_saved"] is False
    assert events[-1][1]["answer"] == ANSWER
    # history.timeout_s is 1 s: four calls on a store that is down take seconds, not minutes.
    assert time.monotonic() - started < 10

    proxy.set("up")
    again = chat(url, message="Is it active?", conversation_id=conversation)
    assert again.status_code == 200 and again.json()["history_saved"] is True
    turns = httpx.get(f"{url}/v1/conversations/{conversation}").json()["turns"]
    assert len(turns) == 4  # the refused follow-up left nothing behind


def test_a_hung_chroma_stalls_only_the_requests_that_wait_for_it(
    tmp_path, embedder, query_embedder, chroma_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.devtools.scripted_llm import ScriptedOpenAIServer
    from app.factory import create_app

    target = urlparse(chroma_server_url)
    chroma = TcpProxy(target.hostname or "127.0.0.1", target.port or 8000)
    with closing(chroma) as chroma_proxy, ScriptedOpenAIServer(default_reply=ANSWER) as llm:
        chroma = {"url": chroma_proxy.url("http")}
        collection = f"hung{free_port()}"
        ingest(
            build_container(tmp_path / "ingest", embedder, query_embedder, llm, chroma=chroma),
            tmp_path / "kb",
            collection=collection,
        )
        # A server that has not looked the collection up yet: it must ask Chroma.
        container = build_container(tmp_path / "data", embedder, query_embedder, llm, chroma=chroma)
        monkeypatch.setattr(container.settings.limits, "request_timeout_s", 2.0)
        with live_server(create_app(container=container), free_port()) as url:
            chroma_proxy.set("hang")
            stuck: dict[str, httpx.Response] = {}

            def retrieve() -> None:
                body = {"query": "etna", "collection": collection}
                stuck["response"] = httpx.post(f"{url}/v1/retrieve", json=body, timeout=30)

            waiting = threading.Thread(target=retrieve)
            waiting.start()
            time.sleep(0.5)  # the retrieve is now waiting on Chroma
            try:
                # The event loop is free: other requests are answered at once.
                for _ in range(5):
                    started = time.monotonic()
                    assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                    assert time.monotonic() - started < 0.5
                waiting.join(10)
                # The request waiting on Chroma ends at its deadline.
                assert stuck["response"].status_code == 504
                assert stuck["response"].json()["error"]["code"] == "request_timeout"
            finally:
                chroma_proxy.set("refuse")  # cut the hung connections so the blocked threads end
                waiting.join(10)
