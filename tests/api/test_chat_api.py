"""Chat, streaming, history, retrieve, health and error shapes through the ASGI app."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import upload, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture
def kb(client):
    files = {
        "etna.txt": b"Mount Etna is an active volcano on the east coast of Sicily.",
        "chess.txt": b"The Sicilian Defence is a chess opening that begins 1.e4 c5.",
        "penguins.txt": b"Emperor penguins breed during the Antarctic winter.",
    }
    job = wait_for_job(client, upload(client, "kb", files).json()["job_id"])
    assert job["status"] == "succeeded"
    return client


def test_chat_answers_with_citations_and_records_history(kb, llm_server) -> None:
    response = kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb", "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == "Etna is in Sicily [1]."
    assert body["prompt"] == "answer@v6"
    assert body["model"] == llm_server.model
    assert body["usage"]["completion_tokens"] > 0
    assert len(body["citations"]) == 1 and body["citations"][0]["source"] == "etna.txt"
    assert body["history_saved"] is True
    # The model saw the numbered sources and the question.
    sent = llm_server.requests[-1]["messages"]
    assert "Where is Etna?" in sent[-1]["content"] and "[1]" in sent[-1]["content"]

    conversation = kb.get(f"/v1/conversations/{body['conversation_id']}").json()
    assert [t["role"] for t in conversation["turns"]] == ["user", "assistant"]
    record = conversation["turns"][1]["metadata"]
    assert record["prompt"] == "answer@v6" and record["citations"] == [body["citations"][0]["chunk_id"]]


def test_follow_up_is_condensed_with_history(kb, llm_server) -> None:
    first = kb.post("/v1/chat", json={"message": "Tell me about Mount Etna", "collection": "kb"}).json()
    llm_server.enqueue_text("Is Mount Etna active?")  # the condense step's standalone query
    llm_server.enqueue_text("Yes, it is active [1].")
    second = kb.post(
        "/v1/chat",
        json={"message": "Is it active?", "conversation_id": first["conversation_id"], "collection": "kb"},
    ).json()
    assert second["retrieval"]["query"] == "Is Mount Etna active?"
    assert second["citations"][0]["source"] == "etna.txt"
    answer_prompt = llm_server.requests[-1]["messages"][-1]["content"]
    assert "Tell me about Mount Etna" in answer_prompt  # history reached the answer prompt
    turns = kb.get(f"/v1/conversations/{first['conversation_id']}").json()["turns"]
    assert len(turns) == 4
    assert kb.delete(f"/v1/conversations/{first['conversation_id']}").status_code == 204
    assert kb.get(f"/v1/conversations/{first['conversation_id']}").status_code == 404


@pytest.mark.parametrize(
    "rewrite",
    [
        "Etna is in Sicily [1].",  # the previous answer copied back
        "User: Where is Etna?\nAssistant: Etna is in Sicily.",  # the transcript
        "",  # nothing
        "How do emperor penguins breed?",  # a drift
    ],
)
def test_an_unusable_rewrite_falls_back_to_a_deterministic_query(kb, llm_server, rewrite: str) -> None:
    first = kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"}).json()
    llm_server.enqueue_text(rewrite)
    second = kb.post(
        "/v1/chat",
        json={
            "message": "And is it active?",
            "conversation_id": first["conversation_id"],
            "collection": "kb",
        },
    ).json()
    query = second["retrieval"]["query"]
    assert query.startswith("Where is Etna?") and query.endswith("And is it active?"), query
    assert second["citations"][0]["source"] == "etna.txt"
    metrics = kb.get("/metrics").text
    assert 'ragserver_condense_total{outcome="fallback"} 1.0' in metrics


def test_citations_are_what_the_answer_used_and_grounding_is_checked(kb, llm_server) -> None:
    ask = {"message": "Where is Etna?", "collection": "kb", "top_k": 3}
    llm_server.enqueue_text("Mount Etna is on the east coast of Sicily.")  # no markers: by overlap
    body = kb.post("/v1/chat", json=ask).json()
    assert [c["source"] for c in body["citations"]] == ["etna.txt"]
    assert body["grounding"] == {"score": 1.0, "facts": 2, "unsupported": []}  # Etna, Sicily
    llm_server.enqueue_text("I cannot tell.")  # nothing matches: nothing cited
    assert kb.post("/v1/chat", json=ask).json()["citations"] == []
    llm_server.enqueue_text("Etna is in Calabria [1].")  # a name its source does not hold
    wrong = kb.post("/v1/chat", json=ask).json()
    assert wrong["grounding"]["unsupported"] == ["Calabria"] and wrong["grounding"]["score"] == 0.0
    llm_server.enqueue_text("Etna is in Sicily.\nUser: And Vesuvius?\nAssistant: Naples.")
    assert kb.post("/v1/chat", json=ask).json()["answer"] == "Etna is in Sicily."  # no invented turn
    metrics = kb.get("/metrics").text
    assert "ragserver_answer_unsupported_facts_total 1.0" in metrics
    assert "ragserver_answer_grounding_score_count" in metrics


def test_streaming_chat_events(kb) -> None:
    with kb.stream(
        "POST", "/v1/chat", json={"message": "Where is Etna?", "collection": "kb", "stream": True}
    ) as r:
        assert r.status_code == 200
        header_id = r.headers["x-response-id"]
        events = []
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line.split(":", 1)[1])))
    kinds = [e for e, _ in events]
    # The ids first, before any token; then tokens, citations, done.
    assert kinds[0] == "start" and kinds[1] == "token" and kinds[-2:] == ["citations", "done"]
    text = "".join(d["text"] for e, d in events if e == "token")
    done = events[-1][1]
    assert events[0][1] == {"response_id": header_id, "conversation_id": done["conversation_id"]}
    assert done["response_id"] == header_id
    assert text.strip() == done["answer"] == "Etna is in Sicily [1]."
    assert done["citations"][0]["source"] == "etna.txt"


def test_prompt_version_is_selectable_and_recorded(kb) -> None:
    body = kb.post(
        "/v1/chat", json={"message": "Where is Etna?", "collection": "kb", "prompt": "answer@v2"}
    ).json()
    assert body["prompt"] == "answer@v2"


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({}, 422, "invalid_request"),
        ({"message": ""}, 422, "invalid_request"),
        ({"message": "hi", "collection": "nope"}, 404, "collection_not_found"),
        ({"message": "hi", "collection": "kb", "prompt": "answer@v99"}, 400, "unknown_prompt"),
        ({"message": "hi", "collection": "kb", "conversation_id": "unknown"}, 404, "conversation_not_found"),
        ({"message": "hi", "collection": "kb", "top_k": 0}, 422, "invalid_request"),
        ({"message": "hi", "collection": "kb", "stream": True, "prompt": "nope@v1"}, 400, "unknown_prompt"),
    ],
)
def test_bad_chat_requests(kb, payload, status, code) -> None:
    response = kb.post("/v1/chat", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_llm_down_is_a_502(kb, llm_server) -> None:
    llm_server.enqueue_error(500)
    response = kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "llm_unavailable" and error["message"] == "the language model is unavailable"
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert llm_server.base_url not in response.text and "scripted error" not in response.text


def test_retrieve_endpoint(kb) -> None:
    body = kb.post("/v1/retrieve", json={"query": "chess opening", "collection": "kb", "top_k": 2}).json()
    assert body["results"][0]["source"] == "chess.txt" and len(body["results"]) == 2
    assert kb.post("/v1/retrieve", json={"query": "x", "collection": "nope"}).status_code == 404


def test_health_ready_metrics(kb) -> None:
    assert kb.get("/healthz").json() == {"status": "ok"}
    ready = kb.get("/readyz")
    assert ready.status_code == 200 and all(ready.json()["checks"].values())
    kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"})
    kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb", "stream": True})
    assert kb.get("/no/such/path").status_code == 404
    text = kb.get("/metrics").text
    # Requests are counted under their route template and final status, streamed ones included.
    assert 'ragserver_http_requests_total{method="POST",route="/v1/chat",status="200"} 2.0' in text
    assert 'ragserver_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'ragserver_http_request_seconds_count{route="/v1/chat"} 2.0' in text
    assert "ragserver_retrieval_seconds_count" in text
    assert 'ragserver_llm_tokens_total{kind="completion"}' in text


def test_readyz_names_what_is_down(kb, llm_server) -> None:
    llm_server.stop()
    response = kb.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["llm"] is False
    assert "llm" in response.json()["error"]["message"]
