"""Generation and request bounds, against a real server (uvicorn on loopback) whose LLM is the scripted
OpenAI-compatible server over real HTTP: max_tokens cap, question size, prompt budget, deadline,
client disconnects, overload, JSON body cap, error hygiene and request ids."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.container import Container
from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.conftest import free_port
from tests.live_server import live_server
from tests.security.chat_server import ETNA, build_container, ingest, metric, sse_events, wait_until

pytestmark = pytest.mark.integration

ANSWER = "Etna is in Sicily [1]."
ACTIVE = "ragserver_generations_active"
WAITING = "ragserver_generations_waiting"


@dataclass
class Served:
    url: str
    container: Container
    llm: ScriptedOpenAIServer

    def post(self, path: str, body: dict, **kwargs) -> httpx.Response:  # type: ignore[type-arg]
        return httpx.post(f"{self.url}{path}", json=body, timeout=kwargs.pop("timeout", 30), **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, embedder, query_embedder) -> Iterator[Served]:
    """One server for the module; tests change limits live (the service reads them per request)."""
    from app.factory import create_app

    root = tmp_path_factory.mktemp("limits")
    with ScriptedOpenAIServer(default_reply=ANSWER) as llm:
        container = build_container(root / "data", embedder, query_embedder, llm)
        ingest(container, root / "kb")
        with live_server(create_app(container=container), free_port()) as url:
            yield Served(url, container, llm)


@pytest.fixture(autouse=True)
def fresh_script(served: Served) -> Iterator[None]:
    served.llm._steps.clear()  # a step a refused request never consumed must not leak into the next test
    yield
    served.llm._steps.clear()
    served.llm.word_delay_s = 0.0
    wait_until(lambda: metric(served.url, ACTIVE) == 0 and metric(served.url, WAITING) == 0, timeout=15)


@pytest.fixture
def limits(served: Served, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set limits for one test: `limits(max_tokens=10)`; restored afterwards."""

    def set_limits(**values: object) -> None:
        for name, value in values.items():
            monkeypatch.setattr(served.container.settings.limits, name, value)

    return set_limits


def completion_body(content: str, **extra: object) -> dict:  # type: ignore[type-arg]
    return {"model": "kb", "messages": [{"role": "user", "content": content}], **extra}


def test_max_tokens_over_the_cap_is_a_422_naming_the_limit_on_both_apis(served: Served, limits) -> None:
    limits(max_tokens=2048)
    sent = len(served.llm.requests)
    for path, body in [
        ("/v1/chat/completions", completion_body(ETNA, max_tokens=100_000_000)),
        ("/v1/chat/completions", completion_body(ETNA, max_completion_tokens=2049, stream=True)),
        ("/v1/chat", {"message": ETNA, "max_tokens": 100_000_000}),
        ("/v1/chat", {"message": ETNA, "max_tokens": 2049, "stream": True}),
    ]:
        response = served.post(path, body)
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and "2048" in error["message"]
    assert len(served.llm.requests) == sent  # refused before the model was asked anything

    ok = served.post("/v1/chat", {"message": ETNA, "max_tokens": 2048})
    assert ok.status_code == 200, ok.text
    assert served.llm.requests[-1]["max_tokens"] == 2048


def test_a_question_over_the_limit_is_a_413_naming_it_fast_and_never_echoed(served: Served, limits) -> None:
    limits(max_question_chars=8000)
    sent = len(served.llm.requests)
    cases = [
        ("/v1/chat", {"message": "q" * 8001}),
        ("/v1/chat", {"message": "q" * 8001, "stream": True}),
        ("/v1/chat/completions", completion_body("q" * 8001)),
        # Earlier turns may be long (they give way to the prompt budget); the question may not.
        (
            "/v1/chat/completions",
            {
                "model": "kb",
                "messages": [
                    {"role": "user", "content": "short"},
                    {"role": "assistant", "content": "fine"},
                    {"role": "user", "content": "w " * 4001},
                ],
            },
        ),
    ]
    for path, body in cases:
        response = served.post(path, body)
        assert response.status_code == 413, (path, response.text[:300])
        error = response.json()["error"]
        assert error["code"] == "payload_too_large" and "8000" in error["message"]
        assert len(response.content) < 1000  # the question is not sent back
    # The 1 MB question of the issue (36 s, cut from the left, echoed and stored): refused at once.
    started = time.monotonic()
    response = served.post("/v1/chat", {"message": "word " * 200_000})
    assert response.status_code == 413 and len(response.content) < 1000
    assert time.monotonic() - started < 3
    assert len(served.llm.requests) == sent
    # The same bound on a retrieval query.
    response = served.post("/v1/retrieve", {"query": "q" * 8001})
    assert response.status_code == 413 and "8000" in response.json()["error"]["message"]


def test_history_then_sources_give_way_to_the_context_window_never_system_or_question(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from app.llm.base import approx_prompt_tokens

    container = served.container
    long_docs = {
        f"doc{i}.txt": f"Volcano fact {i}: " + " ".join(f"lava{i}x{j}" for j in range(60)) for i in range(3)
    }
    ingest(container, tmp_path / "long", long_docs, collection="long")
    search = "volcano fact lava"
    ranked = served.post("/v1/retrieve", {"query": search, "collection": "long", "top_k": 3}).json()[
        "results"
    ]
    first, last = ranked[0]["text"], ranked[-1]["text"]
    history = []
    for i in range(8):
        history += [
            {"role": "user", "content": f"old question {i} " + "filler " * 40},
            {"role": "assistant", "content": f"old answer {i} " + "filler " * 40},
        ]
    question = "Which volcano facts do the sources give?"
    body = {
        "model": "long",
        "top_k": 3,
        "max_tokens": 100,
        "messages": [*history, {"role": "user", "content": question}],
    }
    prompt = container.prompts.get(container.settings.prompts.answer)
    system = prompt.render(sources=[], history=[], question="q")[0]

    def need(sources: list[dict], history: list[dict]) -> int:  # type: ignore[type-arg]
        """The prompt's size as the server counts it for this LLM (no tokenizer: the estimate)."""
        given = [
            {"n": s["rank"], "title": s["title"], "source": s["source"], "text": s["text"]} for s in sources
        ]
        return approx_prompt_tokens(prompt.render(sources=given, history=history, question=question))

    # About the prompt's budget: answered whatever the abstention model makes of these made-up sources.
    monkeypatch.setattr(container.settings.answers, "abstain", False)
    # Room for every source and the last four turns: older history goes first.
    monkeypatch.setattr(container.llm, "context_window", need(ranked, history[-4:]) + 100)
    served.llm.enqueue_text(search)  # the condense step (a follow-up becomes a search query)
    assert served.post("/v1/chat/completions", body).status_code == 200
    sent = served.llm.requests[-1]["messages"]
    assert sent[0] == system
    text = sent[-1]["content"]
    assert question in text and all(s["text"] in text for s in ranked)
    assert "old question 7" in text and "old answer 7" in text and "old question 5" not in text

    # Room for two sources and no history: all history goes, then the lowest-ranked source.
    monkeypatch.setattr(container.llm, "context_window", need(ranked[:2], []) + 100)
    served.llm.enqueue_text(search)
    response = served.post("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    sent = served.llm.requests[-1]["messages"]
    text = sent[-1]["content"]
    assert sent[0] == system and question in text
    assert "old question" not in text and "old answer" not in text
    assert first in text and last not in text
    # Citations only ever name sources the model was given.
    assert last not in {c["text"] for c in response.json()["citations"]}

    # No room even for the system message and question beside max_tokens: 413, not a mangled prompt.
    monkeypatch.setattr(container.llm, "context_window", 150)
    sent_before = len(served.llm.requests)
    response = served.post("/v1/chat/completions", body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    assert len(served.llm.requests) == sent_before


def test_the_deadline_ends_a_request_with_504_before_output_and_in_band_mid_stream(
    served: Served, limits
) -> None:
    limits(request_timeout_s=1.0)
    served.llm.enqueue_delay(4)
    started = time.monotonic()
    response = served.post("/v1/chat", {"message": ETNA})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 3

    served.llm.enqueue_delay(4)
    response = served.post("/v1/chat/completions", completion_body(ETNA, stream=True))
    assert response.status_code == 504 and response.json()["error"]["code"] == "request_timeout"

    served.llm.word_delay_s = 0.25
    served.llm.enqueue_text("one two three four five six seven eight nine ten eleven twelve")
    started = time.monotonic()
    with httpx.stream("POST", f"{served.url}/v1/chat", json={"message": ETNA, "stream": True}) as r:
        assert r.status_code == 200
        events = list(sse_events(r.iter_lines()))
    assert time.monotonic() - started < 3
    kinds = [e for e, _ in events]
    assert kinds[:2] == ["start", "token"] and kinds[-1] == "error" and "done" not in kinds
    assert events[-1][1]["error"]["code"] == "request_timeout"
    assert metric(served.url, "ragserver_chat_aborted_total", reason="timeout") >= 3


def test_a_client_that_leaves_cancels_its_generation_and_nothing_is_saved(served: Served, limits) -> None:
    first = served.post("/v1/chat", {"message": ETNA}).json()
    conversation = first["conversation_id"]
    assert first["history_saved"] is True
    limits(max_concurrent_generations=1, max_waiting_generations=0)

    # A JSON client giving up: the upstream call is cancelled, the slot freed at once.
    served.llm.enqueue_text("Where is Mount Etna?")  # the condense step of the follow-up
    served.llm.enqueue_delay(2.5, "an answer nobody reads")
    with pytest.raises(httpx.ReadTimeout):
        served.post(
            "/v1/chat", {"message": "And is it active?", "conversation_id": conversation}, timeout=0.8
        )
    wait_until(lambda: metric(served.url, ACTIVE) == 0, timeout=1.5)
    # The next request is served now, not after the abandoned answer (the single slot is free).
    started = time.monotonic()
    assert served.post("/v1/chat", {"message": ETNA}).status_code == 200
    assert time.monotonic() - started < 2

    # A streaming client leaving after its first token.
    served.llm.enqueue_text("Where is Mount Etna?")
    served.llm.enqueue_text(" ".join(f"word{i}" for i in range(40)))
    served.llm.word_delay_s = 0.1
    body = {"message": "Tell me more", "conversation_id": conversation, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat", json=body, timeout=10) as r:
        stream = sse_events(r.iter_lines())
        assert [next(stream)[0], next(stream)[0]] == ["start", "token"]
    wait_until(lambda: metric(served.url, ACTIVE) == 0, timeout=1.5)

    time.sleep(2)  # past the abandoned JSON answer's upstream delay: had it gone on, it would be saved now
    turns = httpx.get(f"{served.url}/v1/conversations/{conversation}").json()["turns"]
    assert [t["content"] for t in turns] == [ETNA, ANSWER]
    assert metric(served.url, "ragserver_chat_aborted_total", reason="client_gone") >= 1


def test_beyond_the_waiting_room_requests_get_503_with_retry_after(served: Served, limits) -> None:
    limits(max_concurrent_generations=1, max_waiting_generations=1)
    served.llm.enqueue_delay(1.5)
    served.llm.enqueue_delay(0.5)
    results: dict[str, httpx.Response] = {}

    def ask(name: str) -> None:
        results[name] = served.post("/v1/chat", {"message": ETNA})

    running = threading.Thread(target=ask, args=("running",))
    running.start()
    wait_until(lambda: metric(served.url, ACTIVE) == 1)
    waiting = threading.Thread(target=ask, args=("waiting",))
    waiting.start()
    wait_until(lambda: metric(served.url, WAITING) == 1)

    started = time.monotonic()
    for path, body in [
        ("/v1/chat", {"message": ETNA}),
        ("/v1/chat", {"message": ETNA, "stream": True}),
        ("/v1/chat/completions", completion_body(ETNA)),
    ]:
        refused = served.post(path, body)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "server_busy"
        assert int(refused.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 1  # refused at once, not after the queue

    running.join(10)
    waiting.join(10)
    assert results["running"].status_code == 200 and results["waiting"].status_code == 200
    assert metric(served.url, "ragserver_generations_rejected_total") >= 3


def test_json_bodies_over_the_cap_are_a_413_while_they_stream_in(served: Served, limits) -> None:
    limits(max_json_body_kb=4)
    big = {"query": "etna " * 8000, "collection": "kb"}  # about 40 KB

    declared = served.post("/v1/retrieve", big)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"
    assert "4 KB" in declared.json()["error"]["message"]
    assert declared.json()["error"]["request_id"] == declared.headers["X-Request-ID"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap applies as the bytes arrive
        yield b'{"collection": "kb", "query": "'
        for _ in range(100):
            yield b"etna " * 100
        yield b'"}'

    streamed = httpx.post(
        f"{served.url}/v1/retrieve", content=chunked(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"

    assert served.post("/v1/retrieve", {"query": "etna " * 600, "collection": "kb"}).status_code == 200
    # Uploads are multipart and bounded by the documents API, not by the JSON cap.
    upload = httpx.post(
        f"{served.url}/v1/collections/uploaded/documents",
        files=[("files", ("big.txt", b"Mount Etna erupts. " * 500))],  # about 10 KB
        timeout=30,
    )
    assert upload.status_code == 202, upload.text
    job = f"{served.url}/v1/jobs/{upload.json()['job_id']}"
    wait_until(lambda: httpx.get(job).json()["status"] not in ("queued", "running"), timeout=60, every=0.2)


def test_llm_failures_reach_clients_as_a_stable_code_without_upstream_details(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaks = (served.llm.base_url, "127.0.0.1", "scripted", "openai-compatible", "Error(")

    served.llm.enqueue_error(500)
    response = served.post("/v1/chat", {"message": ETNA}, headers={"X-Request-ID": "llm-down-1"})
    assert response.status_code == 502
    assert response.json() == {
        "error": {
            "code": "llm_unavailable",
            "message": "the language model is unavailable",
            "request_id": "llm-down-1",
        }
    }
    assert response.headers["X-Request-ID"] == "llm-down-1"

    served.llm.enqueue_error(503)
    response = served.post("/v1/chat/completions", completion_body(ETNA))
    assert response.status_code == 502 and not any(leak in response.text for leak in leaks)

    served.llm.enqueue_text("alpha beta gamma delta", drop_after=2)
    with httpx.stream("POST", f"{served.url}/v1/chat", json={"message": ETNA, "stream": True}) as r:
        request_id = r.headers["X-Request-ID"]
        text = "\n".join(r.iter_lines())
    events = list(sse_events(text.splitlines()))
    assert events[-1][0] == "error"
    assert events[-1][1]["error"] == {
        "code": "llm_unavailable",
        "message": "the language model is unavailable",
        "request_id": request_id,
    }
    assert not any(leak in text for leak in leaks)

    # The LLM's own call deadline (retries included): a 504 with its own code.
    monkeypatch.setattr(served.container.llm, "deadline_s", 0.5)
    served.llm.enqueue_delay(3)
    started = time.monotonic()
    response = served.post("/v1/chat", {"message": ETNA})
    assert response.status_code == 504 and response.json()["error"]["code"] == "llm_timeout"
    assert time.monotonic() - started < 2.5 and not any(leak in response.text for leak in leaks)


def test_every_response_carries_its_request_id(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = "client-id_1.A"
    for method, path, body, status in [
        ("GET", "/healthz", None, 200),
        ("GET", "/no/such/path", None, 404),
        ("POST", "/v1/chat", {}, 422),
        ("POST", "/v1/chat", {"message": ETNA}, 200),
    ]:
        response = httpx.request(
            method, f"{served.url}{path}", json=body, headers={"X-Request-ID": kept}, timeout=30
        )
        assert response.status_code == status
        assert response.headers["X-Request-ID"] == kept
        if status >= 400:
            assert response.json()["error"]["request_id"] == kept

    for bad in (b"has spaces", b"x" * 129, b"semi;colon", "\u00e9t\u00e9".encode(), b""):
        response = httpx.get(f"{served.url}/healthz", headers={"X-Request-ID": bad})
        fresh = response.headers["X-Request-ID"]
        assert fresh.encode() != bad and len(fresh) == 32 and fresh.isalnum()
    ids = {httpx.get(f"{served.url}/healthz").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3

    # An unexpected failure: a 500 with a generic message and the id, the details only in the log.
    async def broken(conversation_id: str) -> None:
        raise RuntimeError("secret internals at /srv/data")

    monkeypatch.setattr(served.container.chat, "get_conversation", broken)
    response = httpx.get(f"{served.url}/v1/conversations/abc", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error",
        "request_id": "boom-1",
    }
    assert response.headers["X-Request-ID"] == "boom-1" and "secret" not in response.text
