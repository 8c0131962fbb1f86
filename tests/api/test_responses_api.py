"""Response traces, ids, feedback, engagement events, metrics and the regression-set export, through the
real API with the scripted LLM; the exported file runs through `ragserver eval rag`, and a correction
becomes the reference."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli.main import app as cli
from tests.api.conftest import scripted_llm, upload, wait_for_job

pytestmark = pytest.mark.integration

ETNA = b"Mount Etna is an active volcano on the east coast of Sicily. It erupted in 2021."
PENGUINS = b"# Penguins\n\nEmperor penguins breed during the Antarctic winter.\n"


@pytest.fixture
def kb(make_container, llm_server, tmp_path: Path) -> Iterator[TestClient]:
    from app.factory import create_app

    container = make_container(llm=scripted_llm(llm_server))
    with TestClient(create_app(container=container), raise_server_exceptions=False) as client:
        job = upload(client, "kb", {"etna.txt": ETNA, "penguins.md": PENGUINS}).json()["job_id"]
        assert wait_for_job(client, job)["status"] == "succeeded"
        yield client


def sse(response) -> list[tuple[str | None, object]]:  # type: ignore[no-untyped-def]
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
            events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


def test_a_chat_answer_is_traced_under_its_id(kb: TestClient) -> None:
    r = kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"})
    assert r.status_code == 200
    body = r.json()
    rid = body["response_id"]
    assert r.headers["x-response-id"] == rid and rid.startswith("resp_")
    trace = kb.get(f"/v1/responses/{rid}").json()
    assert trace["id"] == rid and trace["object"] == "response" and trace["output_text"] == body["answer"]
    assert trace["question"] == "Where is Etna?" and trace["search_query"] == "Where is Etna?"
    assert trace["collection"] == "kb" and trace["api"] == "chat"
    assert trace["prompt"] == body["prompt"] and trace["model"] == body["model"]
    assert trace["params"]["max_tokens"] > 0 and "temperature" in trace["params"]
    assert trace["retrieval"]["mode"] == "hybrid"
    chunks = trace["chunks"]
    assert [c["rank"] for c in chunks] == list(range(1, len(chunks) + 1)) and len(chunks) == 2
    assert {"chunk_id", "document_id", "score", "title", "source", "text"} <= set(chunks[0])
    assert chunks[0]["source"] == "etna.txt"
    assert (
        trace["latency_ms"]["retrieve"] > 0
        and trace["latency_ms"]["total"] >= trace["latency_ms"]["retrieve"]
    )
    assert trace["usage"]["completion_tokens"] > 0
    assert trace["outcome"] == "answered" and trace["feedback"] == [] and trace["key_id"] is None
    assert trace["output"][0]["content"][0]["annotations"][0]["type"] == "url_citation"
    assert kb.get("/v1/responses/resp_unknown").json()["error"]["code"] == "response_not_found"


def test_every_api_names_its_response_and_streams_carry_the_id(kb: TestClient) -> None:
    ask = [{"role": "user", "content": "Where is Etna?"}]
    with kb.stream(
        "POST", "/v1/chat/completions", json={"model": "kb", "messages": ask, "stream": True}
    ) as r:
        header = r.headers["x-response-id"]
        chunks = [d for _, d in sse(r) if d != "[DONE]"]
    ids = {c["id"] for c in chunks}  # type: ignore[index]
    assert ids == {"chatcmpl-" + header.removeprefix("resp_")}
    by_chunk_id = kb.get(f"/v1/responses/{ids.pop()}").json()
    assert by_chunk_id["id"] == header and by_chunk_id["api"] == "chat.completions"
    assert by_chunk_id["latency_ms"]["ttft"] is not None  # streamed: time to first token measured

    plain = kb.post("/v1/chat/completions", json={"model": "kb", "messages": ask})
    assert plain.json()["id"] == "chatcmpl-" + plain.headers["x-response-id"].removeprefix("resp_")
    legacy = kb.post("/v1/completions", json={"model": "kb", "prompt": "Where is Etna?"})
    assert kb.get(f"/v1/responses/{legacy.json()['id']}").json()["api"] == "completions"
    resp = kb.post("/v1/responses", json={"model": "kb", "input": "Where is Etna?"})
    assert resp.json()["id"] == resp.headers["x-response-id"]
    assert kb.get(f"/v1/responses/{resp.json()['id']}").json()["api"] == "responses"
    with kb.stream(
        "POST", "/v1/chat", json={"message": "Where is Etna?", "collection": "kb", "stream": True}
    ) as r:
        events = sse(r)
    assert events[0][0] == "start" and events[0][1]["response_id"] == r.headers["x-response-id"]  # type: ignore[index]


def test_feedback_events_and_metrics(kb: TestClient) -> None:
    rid = kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"}).json()["response_id"]
    first = kb.post(f"/v1/responses/{rid}/feedback", json={"rating": "down", "comment": "too short"})
    assert first.status_code == 200 and first.json()["feedback"]["rating"] == "down"
    # The same caller again: replaces its feedback (one entry, the new content).
    again = kb.post(
        f"/v1/responses/{rid}/feedback", json={"rating": "down", "correction": "On Sicily.", "tags": ["geo"]}
    )
    assert again.status_code == 200
    feedback = kb.get(f"/v1/responses/{rid}").json()["feedback"]
    assert len(feedback) == 1 and feedback[0]["correction"] == "On Sicily." and feedback[0]["comment"] is None
    assert feedback[0]["caller"] == "anonymous" and feedback[0]["tags"] == ["geo"]

    for bad, status, code in (
        ({}, 400, "invalid_feedback"),
        ({"comment": "only a comment"}, 400, "invalid_feedback"),
        ({"rating": "meh"}, 422, "invalid_request"),
        ({"score": 1.5}, 422, "invalid_request"),
        ({"rating": "up", "colour": "red"}, 422, "invalid_request"),
    ):
        r = kb.post(f"/v1/responses/{rid}/feedback", json=bad)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), bad
    assert kb.post("/v1/responses/resp_nope/feedback", json={"rating": "up"}).status_code == 404
    too_long = kb.post(f"/v1/responses/{rid}/feedback", json={"rating": "down", "comment": "x" * 20_001})
    assert (too_long.status_code, too_long.json()["error"]["code"]) == (400, "invalid_feedback")
    too_many = kb.post(
        f"/v1/responses/{rid}/feedback", json={"rating": "down", "tags": [str(i) for i in range(21)]}
    )
    assert too_many.status_code == 400
    assert kb.get("/v1/responses", params={"since": "yesterday"}).status_code == 400
    assert kb.get("/v1/responses", params={"limit": 0}).status_code == 422
    assert kb.get("/v1/feedback/export", params={"rating": "meh"}).status_code == 422

    assert (
        kb.post(f"/v1/responses/{rid}/events", json={"type": "citation_opened", "citation": 1}).status_code
        == 204
    )
    assert kb.post(f"/v1/responses/{rid}/events", json={"type": "copied"}).status_code == 204
    assert (
        kb.post(f"/v1/responses/{rid}/events", json={"type": "citation_opened", "citation": 9}).status_code
        == 400
    )
    assert kb.post(f"/v1/responses/{rid}/events", json={"type": "liked"}).status_code == 422
    assert kb.get(f"/v1/responses/{rid}").json()["events"] == {"citation_opened": 1, "copied": 1}

    metrics = kb.get("/metrics").text
    assert 'ragserver_feedback_total{rating="down"} 2.0' in metrics
    assert 'ragserver_engagement_events_total{type="citation_opened"} 1.0' in metrics
    assert (
        'ragserver_answers_total{model="scripted-model",outcome="answered",prompt="answer@v6"} 1.0' in metrics
    )
    assert 'ragserver_retrieval_top_score_count{collection="kb"}' in metrics
    listed = kb.get("/v1/responses", params={"rating": "down"}).json()["responses"]
    assert [r["id"] for r in listed] == [rid] and listed[0]["corrections"] == ["On Sicily."]


def test_feedback_becomes_a_regression_set_that_eval_rag_runs(
    kb: TestClient, llm_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = kb.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"}).json()
    follow = kb.post(
        "/v1/chat",
        json={
            "message": "When did it erupt?",
            "collection": "kb",
            "conversation_id": first["conversation_id"],
        },
    ).json()
    good = kb.post("/v1/chat", json={"message": "When do emperor penguins breed?", "collection": "kb"}).json()
    kb.post(
        f"/v1/responses/{follow['response_id']}/feedback", json={"rating": "down", "correction": "In 2021."}
    )
    kb.post(f"/v1/responses/{good['response_id']}/feedback", json={"rating": "up"})

    container = kb.app.state.container  # type: ignore[attr-defined]
    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(container.settings.data_dir))
    out = tmp_path / "regression.jsonl"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["feedback", "export", "--out", str(out), "--collection", "kb"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["response_id"] for r in rows] == [follow["response_id"], good["response_id"]]
    down, up = rows
    assert down["question"] == "When did it erupt?" and down["references"] == ["In 2021."]
    assert [t["role"] for t in down["history"]] == ["user", "assistant"]  # the follow-up's context
    assert "gold_document_ids" not in down
    assert up["gold_document_ids"] == [c["document_id"] for c in good["citations"]]
    only_down = runner.invoke(
        cli, ["feedback", "export", "--out", str(tmp_path / "d.jsonl"), "--rating", "down"]
    )
    assert json.loads(only_down.output.strip().splitlines()[-1])["questions"] == 1
    api_export = kb.get("/v1/feedback/export", params={"rating": "down"})
    assert [json.loads(x)["response_id"] for x in api_export.text.splitlines()] == [follow["response_id"]]

    # The exported file runs through eval rag as it is; the correction is the reference it scores against.
    for name, value in scripted_llm(llm_server).items():
        monkeypatch.setenv(f"RAGSERVER_LLM__{name.upper()}", str(value))
    run = runner.invoke(
        cli,
        ["eval", "rag", "--questions", str(out), "--collection", "kb", "--out", str(tmp_path / "run")],
        catch_exceptions=False,
    )
    assert run.exit_code == 0, run.output
    results = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {r["id"] for r in results} == {follow["response_id"], good["response_id"]}
    by_id = {r["id"]: r for r in results}
    assert by_id[follow["response_id"]]["references"] == ["In 2021."]
    assert by_id[good["response_id"]]["scores"]["hit_rate"] == 1.0


def test_monitor_report(kb: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for q in ("Where is Etna?", "When do emperor penguins breed?", "Who won the 1930 World Cup?"):
        rid = kb.post("/v1/chat", json={"message": q, "collection": "kb"}).json()["response_id"]
        kb.post(f"/v1/responses/{rid}/feedback", json={"rating": "up" if "Etna" in q else "down"})
    container = kb.app.state.container  # type: ignore[attr-defined]
    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(container.settings.data_dir))
    result = CliRunner().invoke(
        cli, ["monitor", "report", "--out", str(tmp_path / "monitor"), "--since", "1d"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "monitor" / "summary.json").read_text())
    assert summary["overall"]["answers"] == 3
    assert summary["overall"]["thumbs_up_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert summary["overall"]["feedback_rate"] == 1.0
    assert set(summary["by"]) == {"collection", "prompt", "model", "answered_by"}
    assert "kb" in summary["by"]["collection"] and summary["by"]["answered_by"]["llm"]["answers"] == 3
    assert summary["over_time"] and summary["top_score_drift"]["second_half_n"] == 3
    html = (tmp_path / "monitor" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "http" not in html.split("<body", 1)[1].replace(
        "http-equiv", ""
    )
