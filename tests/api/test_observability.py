"""OpenTelemetry spans (captured with the SDK's in-memory exporter: names, nesting and the GenAI
semantic-convention attributes) and the online judge (a scripted judge on loopback: the sampling rate
is honoured, scores land on the trace and in a metric, and a judge outage never fails a chat)."""

from __future__ import annotations

import random
import time

import pytest
from fastapi.testclient import TestClient

from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.api.conftest import scripted_llm, upload, wait_for_job
from tests.unit.test_eval_judge import scripted_verdicts

pytestmark = pytest.mark.integration

ETNA = b"Mount Etna is an active volcano on the east coast of Sicily."


def _kb(client: TestClient) -> None:
    job = upload(client, "kb", {"etna.txt": ETNA}).json()["job_id"]
    assert wait_for_job(client, job)["status"] == "succeeded"


def test_spans_carry_the_genai_attributes(make_container, llm_server) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from app.factory import create_app
    from app.telemetry import setup_tracing

    exporter = InMemorySpanExporter()
    container = make_container(llm=scripted_llm(llm_server), otel={"enabled": True})
    setup_tracing(container.settings, exporter=exporter)
    with TestClient(create_app(container=container)) as client:
        _kb(client)
        exporter.clear()
        first = client.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"}).json()
        client.post(
            "/v1/chat",
            json={
                "message": "And its height?",
                "collection": "kb",
                "conversation_id": first["conversation_id"],
            },
        )
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}  # type: ignore[type-arg]
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert {"retrieval", "embeddings", "chat scripted-model", "condense scripted-model"} <= set(by_name)
    chat = by_name["chat scripted-model"][0].attributes
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.provider.name"] == "openai"
    assert chat["gen_ai.request.model"] == "scripted-model"
    assert chat["gen_ai.request.max_tokens"] > 0 and "gen_ai.request.temperature" in chat
    assert chat["gen_ai.usage.input_tokens"] > 0 and chat["gen_ai.usage.output_tokens"] > 0
    assert tuple(chat["gen_ai.response.finish_reasons"]) == ("stop",)
    retrieval = by_name["retrieval"][0]
    assert (
        retrieval.attributes["ragserver.collection"] == "kb" and retrieval.attributes["ragserver.hits"] >= 1
    )
    embedding = by_name["embeddings"][0]
    assert embedding.attributes["gen_ai.operation.name"] == "embeddings"
    # The query embedding runs on a worker thread, under the retrieval span.
    assert embedding.parent is not None and embedding.parent.span_id in {
        s.context.span_id for s in by_name["retrieval"]
    }


def _judged_app(make_container, llm_server, judge_url: str, rate: float):  # type: ignore[no-untyped-def]
    from app.factory import create_app

    container = make_container(
        llm=scripted_llm(llm_server),
        judge={"base_url": judge_url, "model": "judge-model", "sample_rate": rate, "timeout_s": 10},
    )
    container.online_judge._rng = random.Random(7)  # type: ignore[union-attr]
    return container, create_app(container=container)


def test_the_online_judge_scores_a_sample(make_container, llm_server) -> None:
    with ScriptedOpenAIServer(scripted_verdicts, model="judge-model") as judge:
        container, app = _judged_app(make_container, llm_server, judge.base_url, 0.5)
        with TestClient(app) as client:
            _kb(client)
            ids = [
                client.post("/v1/chat", json={"message": f"Where is Etna? ({i})", "collection": "kb"}).json()[
                    "response_id"
                ]
                for i in range(12)
            ]
            client.portal.call(container.online_judge.wait_idle)
            judged = [client.get(f"/v1/responses/{rid}").json()["judge"] for rid in ids]
            metrics = client.get("/metrics").text
    picked = [j for j in judged if j is not None]
    draws = random.Random(7)
    expected = sum(draws.random() < 0.5 for _ in range(12))
    assert len(picked) == expected and 0 < expected < 12  # the sampling rate, not every answer
    assert all(0.0 <= j["faithfulness"] <= 1.0 for j in picked)
    assert f'ragserver_online_judge_total{{outcome="scored"}} {float(expected)}' in metrics
    assert 'ragserver_online_judge_score_count{metric="faithfulness"}' in metrics


def test_a_judge_outage_never_fails_a_chat(make_container, llm_server) -> None:
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    container, app = _judged_app(make_container, llm_server, dead, 1.0)
    with TestClient(app) as client:
        _kb(client)
        started = time.perf_counter()
        r = client.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"})
        assert r.status_code == 200 and r.json()["answer"]
        assert time.perf_counter() - started < 30
        client.portal.call(container.online_judge.wait_idle)
        assert client.get(f"/v1/responses/{r.json()['response_id']}").json()["judge"] is None
        assert 'ragserver_online_judge_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_retention_sweep_deletes_old_traces(make_container, llm_server) -> None:
    from app.factory import create_app

    container = make_container(llm=scripted_llm(llm_server), responses={"retention_days": 1})
    with TestClient(create_app(container=container)) as client:
        _kb(client)
        rid = client.post("/v1/chat", json={"message": "Where is Etna?", "collection": "kb"}).json()[
            "response_id"
        ]
        assert client.portal.call(container.traces.sweep) == 0  # a fresh trace stays
        assert client.portal.call(container.traces.sweep, time.time() + 2 * 86400) == 1
        assert client.get(f"/v1/responses/{rid}").status_code == 404
