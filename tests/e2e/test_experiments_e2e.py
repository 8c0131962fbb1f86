"""An A/B experiment as a platform engineer runs it, through the API and the CLI, on two real server
processes sharing one database and one Redis (history there), with the scripted in-process LLM: register
a second model, a 50/50 experiment whose arm changes prompt and model, traffic through all four answer
APIs across both replicas (a conversation keeps its arm on either), feedback and citation clicks, the
report (JSON and the HTML page), conclude, and the winner answering as the collection's profile. A
second tenant sees none of it. A routing chain set through one replica answers on the other."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

from app.cli.main import app as cli
from tests.live_server import NO_MODELS, serve_process

pytestmark = pytest.mark.e2e

EXPERIMENT = """
name: prompt-and-model
collections: [handbook]
unit: conversation
seed: 7
arms:
  - {name: control, weight: 50, overrides: {}}
  - {name: treat, weight: 50, overrides: {prompt: answer@v4, model: second}}
primary_metric: thumbs_up_rate
guardrails: [{metric: error_rate, max_increase: 0.2}]
"""


def cli_run(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("experiments")
    prefix = f"ragserver-test:{os.getpid()}:{time.time_ns()}:"
    env = NO_MODELS | {
        "RAGSERVER_LLM__PROVIDER": "scripted",
        "RAGSERVER_AUTH__MODE": "api_key",
        "RAGSERVER_HISTORY__REDIS_URL": redis_url,
        "RAGSERVER_HISTORY__KEY_PREFIX": prefix,
        "RAGSERVER_DATABASE_URL": f"sqlite:///{root / 'shared.sqlite3'}",
        "RAGSERVER_EXPERIMENTS__REFRESH_S": "0.5",
    }
    cli_env = {
        "RAGSERVER_DATABASE_URL": env["RAGSERVER_DATABASE_URL"],
        "RAGSERVER_DATA_DIR": str(root / "cli"),
    }
    keys = {
        name: cli_run(cli_env, "keys", "create", "--tenant", tenant, "--name", name, "--role", "admin")["key"]
        for name, tenant in (("acme", "acme"), ("other", "other"))
    }
    with serve_process(root / "one", env) as one, serve_process(root / "two", env) as two:
        servers = [one.url, two.url]
        for url in servers:  # each replica's in-memory index gets the document (the database is shared)
            for key in keys.values():
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                    r = c.post(
                        "/v1/collections/handbook/documents",
                        files=[("files", ("leave.txt", b"Employees get 30 days of paid leave a year."))],
                    )
                    assert r.status_code == 202, r.text
                    _wait_job(c, r.json()["job_id"])
        yield {"servers": servers, "keys": keys, "root": root}
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def _wait_job(c: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if c.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded":
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not succeed")


def client(cluster: dict[str, Any], replica: int, key: str = "acme") -> httpx.Client:
    headers = {"Authorization": f"Bearer {cluster['keys'][key]}"}
    return httpx.Client(base_url=cluster["servers"][replica], headers=headers, timeout=60)


def test_register_experiment_traffic_report_conclude(cluster: dict[str, Any], tmp_path: Path) -> None:
    one, two = client(cluster, 0), client(cluster, 1)
    url, key = cluster["servers"][0], cluster["keys"]["acme"]
    cli_env = {"RAGSERVER_API_KEY": key}

    # A second model, through the CLI against the running server; listed on both replicas.
    added = cli_run(cli_env, "models", "add", "second", "--provider", "scripted", "--model", "second-model",
                    "--price-in", "0.5", "--price-out", "1.5", "--license", "apache-2.0",
                    "--url", url)  # fmt: skip
    assert added["source"] == "registered"
    listed = two.get("/v1/admin/models").json()
    assert {m["name"]: m["license"] for m in listed["models"]}["second"] == "apache-2.0"
    assert {"context_window", "license", "price_in"} <= set(listed["models"][0])

    # The experiment from its YAML file, started on the other replica.
    spec = tmp_path / "experiment.yaml"
    spec.write_text(EXPERIMENT)
    assert cli_run(cli_env, "experiments", "create", "--file", str(spec), "--url", url)["status"] == "draft"
    assert (
        cli_run(cli_env, "experiments", "start", "prompt-and-model", "--url", cluster["servers"][1])["status"]
        == "running"
    )
    time.sleep(0.6)  # both replicas re-read the running experiments

    # Traffic: a conversation starts on one replica and goes on on the other, keeping its arm.
    seen: dict[str, list[str]] = {"control": [], "treat": []}
    for i in range(16):
        first_on, then_on = (one, two) if i % 2 else (two, one)
        r = first_on.post(
            "/v1/chat", json={"message": f"How many days of leave? ({i})", "collection": "handbook"}
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        arm = answer["arm"]
        assert answer["experiment"] == "prompt-and-model"
        assert r.headers["X-RAGServer-Arm"] == f"prompt-and-model/{arm}"
        expected = ("answer@v4", "second-model") if arm == "treat" else ("answer@v6", "scripted-model")
        assert (answer["prompt"], answer["model"]) == expected
        follow = then_on.post(
            "/v1/chat",
            json={
                "message": "And in a half year?",
                "collection": "handbook",
                "conversation_id": answer["conversation_id"],
            },
        )
        assert follow.status_code == 200 and follow.json()["arm"] == arm
        seen[arm].append(answer["response_id"])
    assert seen["control"] and seen["treat"]

    # Feedback: every treat answer rated up and clicked; control answers rated down.
    for arm, ids in seen.items():
        for rid in ids:
            rating = "up" if arm == "treat" else "down"
            assert one.post(f"/v1/responses/{rid}/feedback", json={"rating": rating}).status_code == 200
            if arm == "treat":
                r = two.post(f"/v1/responses/{rid}/events", json={"type": "citation_opened", "citation": 1})
                assert r.status_code == 204, r.text

    # The other three answer APIs are enrolled too, header and all; the stream's start event says so.
    ask = [{"role": "user", "content": "How many days of leave?"}]
    checks = [
        one.post("/v1/chat/completions", json={"model": "handbook", "messages": ask}),
        two.post("/v1/completions", json={"model": "handbook", "prompt": "How many days of leave?"}),
        one.post("/v1/responses", json={"model": "handbook", "input": "How many days of leave?"}),
    ]
    for r in checks:
        assert r.status_code == 200, r.text
        assert r.headers["X-RAGServer-Arm"].startswith("prompt-and-model/")
        assert r.json()["ragserver"]["experiment"] == "prompt-and-model"
    with one.stream(
        "POST", "/v1/chat", json={"message": "Leave?", "collection": "handbook", "stream": True}
    ) as s:
        assert s.headers["X-RAGServer-Arm"].startswith("prompt-and-model/")
        text = "".join(s.iter_text())
    start = json.loads(text.split("event: start")[1].split("data: ")[1].splitlines()[0])
    assert start["experiment"] == "prompt-and-model" and start["arm"] in ("control", "treat")
    # Naming a prompt opts out: no arm, and the trace says why.
    explicit = one.post(
        "/v1/chat", json={"message": "Leave?", "collection": "handbook", "prompt": "answer@v5"}
    )
    assert "X-RAGServer-Arm" not in explicit.headers and explicit.json()["arm"] is None
    trace = two.get(f"/v1/responses/{explicit.json()['response_id']}").json()
    assert trace["params"]["experiment"]["enrolled"] is False

    # The report, through the API (either replica) and the CLI with --out.
    report = two.get("/v1/admin/experiments/prompt-and-model/report").json()
    arms = report["arms"]
    assert arms["control"]["units"] >= len(seen["control"]) and arms["treat"]["units"] >= len(seen["treat"])
    # Rates are per answer: half of them (the follow-ups) were not rated.
    assert arms["treat"]["thumbs_up_rate"] > 0.3 and arms["control"]["thumbs_up_rate"] == 0
    assert arms["control"]["thumbs_down_rate"] > 0.3
    assert arms["treat"]["citation_ctr"] > 0 == arms["control"]["citation_ctr"]
    assert arms["treat"]["cost_per_answer"] > 0 == arms["control"]["cost_per_answer"]
    compared = report["comparisons"]["treat"]["thumbs_up_rate"]
    assert compared["diff"] > 0 and compared["test"] and len(compared["ci95"]) == 2
    assert report["srm"]["flagged"] is False and report["stopped_arms"] == []
    out = tmp_path / "report"
    printed = cli_run(cli_env, "experiments", "report", "prompt-and-model", "--out", str(out), "--url", url)
    assert set(printed) >= {"experiment", "status", "arms", "comparisons", "srm", "stopped_arms"}
    page = (out / "report.html").read_text()
    assert "prompt-and-model" in page and "thumbs_up_rate" in page
    html = one.get("/v1/admin/experiments/prompt-and-model/report", params={"format": "html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")

    # Another tenant sees none of it.
    other = client(cluster, 1, "other")
    assert other.get("/v1/admin/experiments").json()["experiments"] == []
    assert other.get("/v1/admin/experiments/prompt-and-model/report").status_code == 404
    assert "second" not in {m["name"] for m in other.get("/v1/admin/models").json()["models"]}
    r = other.post("/v1/chat", json={"message": "Leave?", "collection": "handbook"})
    assert r.status_code == 200 and "X-RAGServer-Arm" not in r.headers

    # Ship the winner: its overrides become the profile, the experiment stops, answers follow the profile.
    shipped = cli_run(cli_env, "experiments", "conclude", "prompt-and-model", "--arm", "treat", "--url", url)
    assert shipped["experiment"]["status"] == "stopped"
    profile = cli_run(cli_env, "collections", "profile", "handbook", "--url", cluster["servers"][1])
    assert profile["profile"] == {"prompt": "answer@v4", "model": "second"}
    time.sleep(0.6)
    after = two.post("/v1/chat", json={"message": "Leave?", "collection": "handbook"})
    assert "X-RAGServer-Arm" not in after.headers
    assert (after.json()["prompt"], after.json()["model"]) == ("answer@v4", "second-model")
    assert (
        other.post("/v1/chat", json={"message": "Leave?", "collection": "handbook"}).json()["prompt"]
        == "answer@v6"
    )
    # A routing chain set through one replica answers on the other within refresh_s (no restart).
    chain = {"stages": [{"type": "rule", "id": "hi", "pattern": "^hello", "answer": "Hello from the chain."}]}
    assert one.put("/v1/admin/collections/handbook/routes", json=chain).status_code == 200
    time.sleep(0.6)
    routed = two.post("/v1/chat", json={"message": "hello there", "collection": "handbook"}).json()
    assert (routed["answered_by"], routed["route"], routed["answer"]) == (
        "rule",
        "hi",
        "Hello from the chain.",
    )
    assert (
        other.post("/v1/chat", json={"message": "hello there", "collection": "handbook"}).json()[
            "answered_by"
        ]
        == "llm"
    )  # the other tenant's handbook has no chain
    audit = one.get("/v1/admin/audit", params={"since": "1h"}).json()["entries"]
    assert {
        "model.add",
        "experiment.create",
        "experiment.start",
        "experiment.conclude",
        "profile.set",
        "routes.set",
    } <= {e["action"] for e in audit}
