"""Tenant isolation, with auth mode api_key: every route of the app is called with no key, a bad key, a
revoked key, a reader key on write routes, and tenant B's keys against tenant A's objects (collection,
document, job, conversation, key). A route this table does not know fails the suite, so a new route
cannot ship without deciding who may call it; a route without the auth dependency fails here and
stops the app from starting (`app.api.guards.check_routes_guarded`).

One app for the module (real embedder, real Chroma, SQLite, a scripted LLM); tenants A and B each
upload their own `policy.txt` into a collection named `hr`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.guards import PUBLIC_PATHS, iter_routes, unguarded_routes
from app.container import Container
from app.devtools.scripted_llm import ScriptedOpenAIServer
from app.settings import Settings
from tests.api.conftest import scripted_llm
from tests.conftest import free_port
from tests.live_server import live_server

pytestmark = pytest.mark.integration

A_POLICY = b"Travel policy of Alpha Corp. The daily per-diem allowance is 65 EUR. ALPHA-SECRET-7731."
B_POLICY = b"Travel policy of Beta Ltd. The daily per-diem allowance is 90 EUR. BETA-SECRET-4410."
A_MARKERS = ("ALPHA-SECRET-7731", "Alpha Corp")
# Tenant A's registered model and experiment (on its hr, whose answer profile A sets too).
A_MODEL = {"name": "alpha-private-llm", "provider": "scripted", "model": "alpha-private-llm"}
A_EXPERIMENT = {
    "name": "alpha-secret-experiment",
    "collections": ["hr"],
    "arms": [
        {"name": "control", "weight": 1},
        {"name": "v4", "weight": 1, "overrides": {"prompt": "answer@v4"}},
    ],
}


@dataclass
class Key:
    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class World:
    app: FastAPI
    client: httpx.Client  # a real server (uvicorn on loopback), so real OpenAI clients can call it
    container: Container
    keys: dict[str, Key]
    a_doc: str
    b_doc: str
    a_job: str
    a_conversation: str
    a_response: str
    a_curated: str
    log_lines: list[str]
    data_dir: Path


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, embedder, query_embedder) -> Iterator[World]:  # type: ignore[no-untyped-def]
    from app.factory import create_app

    root = tmp_path_factory.mktemp("isolation")
    lines: list[str] = []
    handler = _Collect(lines)
    logging.getLogger().addHandler(handler)
    with ScriptedOpenAIServer(default_reply="The per-diem allowance is in the policy [1].") as llm:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=root / "data",
            llm=scripted_llm(llm),
            auth={"mode": "api_key", "key_cache_s": 0.5},
        )
        container = Container(settings, embedder=embedder, query_embedder=query_embedder)
        made: dict[str, Key] = {}
        for tenant in ("alpha", "beta"):
            for role in ("reader", "writer", "admin"):
                record, key = container.keys.create(tenant=tenant, name=f"{tenant} {role}", role=role)
                made[f"{tenant}-{role}"] = Key(record.key_id, key)
        record, key = container.keys.create(tenant="alpha", name="gone", role="admin")
        container.keys.revoke(record.key_id)
        made["alpha-revoked"] = Key(record.key_id, key)
        record, key = container.keys.create(tenant="alpha", name="expired", role="admin", expires_in_s=0.01)
        made["alpha-expired"] = Key(record.key_id, key)
        record, key = container.keys.create(
            tenant="alpha", name="other only", role="admin", collections=["other"]
        )
        made["alpha-other-only"] = Key(record.key_id, key)

        app = create_app(container=container)
        with live_server(app, free_port()) as url, httpx.Client(base_url=url, timeout=60) as client:
            docs = {}
            for tenant, text in (("alpha", A_POLICY), ("beta", B_POLICY)):
                r = client.post(
                    "/v1/collections/hr/documents",
                    files=[("files", ("policy.txt", text))],
                    headers=made[f"{tenant}-writer"].headers,
                )
                assert r.status_code == 202, r.text
                job = _wait(client, r.json()["job_id"], made[f"{tenant}-reader"])
                assert job["status"] == "succeeded", job
                docs[tenant] = (r.json()["documents"][0]["document_id"], r.json()["job_id"])
            a_admin = made["alpha-admin"].headers
            assert client.post("/v1/admin/models", json=A_MODEL, headers=a_admin).status_code == 201
            profile = {"top_k": 4, "fusion": "rrf"}
            assert (
                client.patch("/v1/admin/collections/hr/profile", json=profile, headers=a_admin).status_code
                == 200
            )
            assert client.post("/v1/admin/experiments", json=A_EXPERIMENT, headers=a_admin).status_code == 201
            curated = {"question": "What is Alpha's per-diem?", "answer": "ALPHA-SECRET-7731 65 EUR."}
            made_curated = client.post("/v1/admin/collections/hr/curated", json=curated, headers=a_admin)
            assert made_curated.status_code == 201, made_curated.text
            chat = client.post(
                "/v1/chat",
                json={"message": "What is the per-diem?", "collection": "hr"},
                headers=made["alpha-reader"].headers,
            )
            assert chat.status_code == 200, chat.text
            yield World(
                app=app,
                client=client,
                container=container,
                keys=made,
                a_doc=docs["alpha"][0],
                b_doc=docs["beta"][0],
                a_job=docs["alpha"][1],
                a_conversation=chat.json()["conversation_id"],
                a_response=chat.json()["response_id"],
                a_curated=made_curated.json()["id"],
                log_lines=lines,
                data_dir=root / "data",
            )
    logging.getLogger().removeHandler(handler)


def _wait(client: httpx.Client, job_id: str, key: Key, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=key.headers).json()
        if job.get("status") not in ("queued", "running"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished")


# -- the route table --------------------------------------------------------------------------------


# (method, path) -> the role it needs and the request made against tenant A's objects. `b_status` is
# what tenant B's admin gets: 404 for A's objects; for routes on B's own data (its own `hr`), the status
# of a normal answer, whose body must still hold nothing of A's.
@dataclass
class Call:
    role: str
    b_status: int
    json: dict[str, Any] | None = None
    upload: bool = False
    params: dict[str, Any] | None = None


def route_table(w: World) -> dict[tuple[str, str], Call]:
    ask = {"message": "What is the per-diem?", "collection": "hr"}
    return {
        ("POST", "/v1/collections/{collection}/documents"): Call("writer", 202, upload=True),
        ("GET", "/v1/collections/{collection}/documents"): Call("reader", 200),
        ("GET", "/v1/collections/{collection}/documents/{document_id}"): Call("reader", 404),
        ("DELETE", "/v1/collections/{collection}/documents/{document_id}"): Call("writer", 404),
        # Blue/green on B's own hr: its versions, a rebuild refused for its model path (so none runs),
        # no earlier version to roll back to, nothing to prune.
        ("GET", "/v1/collections/{collection}/versions"): Call("reader", 200),
        ("POST", "/v1/collections/{collection}/rebuild"): Call(
            "admin", 400, json={"embedding_model": "/nonexistent/model"}
        ),
        ("POST", "/v1/collections/{collection}/rollback"): Call("admin", 409),
        ("POST", "/v1/collections/{collection}/prune"): Call("admin", 200),
        ("GET", "/v1/jobs/{job_id}"): Call("reader", 404),
        ("POST", "/v1/jobs/{job_id}/cancel"): Call("writer", 404),
        ("POST", "/v1/jobs/{job_id}/retry"): Call("writer", 404),
        # B's own hr exists, but A's conversation id names nothing in tenant B.
        ("POST", "/v1/chat"): Call("reader", 404, json={**ask, "conversation_id": w.a_conversation}),
        ("GET", "/v1/conversations/{conversation_id}"): Call("reader", 404),
        ("DELETE", "/v1/conversations/{conversation_id}"): Call("reader", 404),
        ("POST", "/v1/chat/completions"): Call(
            "reader",
            200,
            json={"model": "hr", "messages": [{"role": "user", "content": "What is the per-diem?"}]},
        ),
        ("POST", "/v1/completions"): Call(
            "reader", 200, json={"model": "hr", "prompt": "What is the per-diem?"}
        ),
        ("POST", "/v1/responses"): Call(
            "reader", 200, json={"model": "hr", "input": "What is the per-diem?"}
        ),
        ("GET", "/v1/models"): Call("reader", 200),
        # B's own answers list (none of A's); A's response by its id names nothing in tenant B.
        ("GET", "/v1/responses"): Call("reader", 200),
        ("GET", "/v1/responses/{response_id}"): Call("reader", 404),
        ("POST", "/v1/responses/{response_id}/feedback"): Call("reader", 404, json={"rating": "down"}),
        ("POST", "/v1/responses/{response_id}/events"): Call("reader", 404, json={"type": "copied"}),
        ("GET", "/v1/feedback/export"): Call("reader", 200),
        ("POST", "/v1/retrieve"): Call(
            "reader", 200, json={"query": "per-diem allowance", "collection": "hr"}
        ),
        ("GET", "/v1/admin/keys"): Call("admin", 200),
        ("POST", "/v1/admin/keys"): Call("admin", 201, json={"name": "made by B", "role": "reader"}),
        ("DELETE", "/v1/admin/keys/{key_id}"): Call("admin", 404),
        ("GET", "/v1/admin/audit"): Call("admin", 200),
        # B's own figures; server-wide /metrics is the operator's (metrics token), no key opens it.
        ("GET", "/v1/admin/metrics"): Call("admin", 200),
        ("GET", "/metrics"): Call("admin", 403),
        # The decision loop: B's own model list, profile and experiments (none of A's); A's model and
        # experiment by name name nothing in tenant B.
        ("GET", "/v1/admin/models"): Call("admin", 200),
        ("POST", "/v1/admin/models"): Call("admin", 201, json={"name": "beta-llm", "provider": "scripted"}),
        ("DELETE", "/v1/admin/models/{name}"): Call("admin", 404),
        ("GET", "/v1/admin/collections/{collection}/profile"): Call("admin", 200),
        ("PUT", "/v1/admin/collections/{collection}/profile"): Call("admin", 200, json={"top_k": 3}),
        ("PATCH", "/v1/admin/collections/{collection}/profile"): Call("admin", 200, json={"mode": "dense"}),
        ("GET", "/v1/admin/experiments"): Call("admin", 200),
        ("POST", "/v1/admin/experiments"): Call(
            "admin", 201, json={**A_EXPERIMENT, "name": "beta-experiment"}, params={"replace": "true"}
        ),
        ("GET", "/v1/admin/experiments/{name}"): Call("admin", 404),
        ("GET", "/v1/admin/experiments/{name}/report"): Call("admin", 404),
        ("POST", "/v1/admin/experiments/{name}/conclude"): Call("admin", 404, json={"arm": "v4"}),
        ("POST", "/v1/admin/experiments/{name}/{action}"): Call("admin", 404),
        # Routing: B's own hr's chain and curated answers; A's curated answer by id is not B's.
        ("GET", "/v1/admin/collections/{collection}/routes"): Call("admin", 200),
        ("PUT", "/v1/admin/collections/{collection}/routes"): Call(
            "admin",
            200,
            json={"stages": [{"type": "rule", "id": "b-hi", "keywords": ["hiya"], "answer": "Hi."}]},
        ),
        ("DELETE", "/v1/admin/collections/{collection}/routes"): Call("admin", 200),
        ("GET", "/v1/admin/collections/{collection}/curated"): Call("admin", 200),
        ("POST", "/v1/admin/collections/{collection}/curated"): Call(
            "admin", 201, json={"question": "Where is Beta's office?", "answer": "Floor 2."}
        ),
        ("POST", "/v1/admin/collections/{collection}/curated/{item_id}/{action}"): Call("admin", 404),
        ("GET", "/v1/admin/collections/{collection}/document-labels"): Call("admin", 200),
        ("PUT", "/v1/admin/collections/{collection}/document-labels"): Call(
            "admin", 200, json={"field": "topic", "labels": {"travel": "per-diem, trips"}}
        ),
        ("DELETE", "/v1/admin/collections/{collection}/document-labels"): Call("admin", 200),
    }


def api_routes(w: World) -> list[tuple[str, str]]:
    """Every (method, path) the app serves but the public ones: `app.routes`, included routers flattened."""
    return sorted(
        (method, route.path)
        for route in iter_routes(w.app.routes)
        if route.path not in PUBLIC_PATHS
        for method in route.methods
    )


def request(w: World, method: str, path: str, call: Call, headers: dict[str, str]) -> httpx.Response:
    values = {
        "collection": "hr",
        "document_id": w.a_doc,
        "job_id": w.a_job,
        "conversation_id": w.a_conversation,
        "key_id": w.keys["alpha-reader"].id,
        "response_id": w.a_response,
        "name": A_EXPERIMENT["name"] if "experiments" in path else A_MODEL["name"],
        "action": "approve" if "curated" in path else "start",
        "item_id": w.a_curated,
    }
    url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
    if call.upload:
        files = [("files", ("from-b.txt", b"Beta's second file."))]
        return w.client.request(method, url, files=files, headers=headers)
    return w.client.request(method, url, json=call.json, params=call.params, headers=headers)


def assert_no_alpha_data(w: World, response: httpx.Response, sent_before: str = "") -> str:
    """Nothing of A's in the body but ids the caller itself sent (an error may echo them, and B's audit
    log records B's own attempts). Returns what this request sent."""
    body = response.text
    sent = str(response.request.url) + response.request.read().decode(errors="replace") + sent_before
    ids = [
        w.a_doc,
        w.a_conversation,
        w.a_job,
        w.a_response,
        *(k.id for n, k in w.keys.items() if n.startswith("alpha")),
    ]
    leaked = [m for m in A_MARKERS if m in body] + [i for i in ids if i in body and i not in sent]
    assert not leaked, f"{response.request.method} {response.request.url}: {leaked} in {body[:500]}"
    return sent


def test_every_route_is_in_the_table_and_has_the_auth_dependency(world: World) -> None:
    table = route_table(world)
    assert set(api_routes(world)) == set(table), "a route was added or removed: add it to route_table"
    assert unguarded_routes(world.app) == []


@pytest.mark.parametrize(
    "credentials", ["none", "malformed", "unknown", "alpha-revoked", "alpha-expired"], ids=str
)
def test_every_route_refuses_a_missing_or_invalid_key(world: World, credentials: str) -> None:
    fixed: dict[str, dict[str, str]] = {
        "none": {},
        "malformed": {"Authorization": "Basic dXNlcjpwYXNz"},
        "unknown": {"Authorization": "Bearer rsk_" + "x" * 43},
    }
    headers = fixed[credentials] if credentials in fixed else world.keys[credentials].headers
    for (method, path), call in route_table(world).items():
        r = request(world, method, path, call, headers)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"
        assert_no_alpha_data(world, r)


def test_every_route_refuses_a_role_too_low(world: World) -> None:
    checked = 0
    for (method, path), call in route_table(world).items():
        for role in ("reader", "writer"):
            if ["reader", "writer", "admin"].index(role) >= ["reader", "writer", "admin"].index(call.role):
                continue
            r = request(world, method, path, call, world.keys[f"alpha-{role}"].headers)
            assert r.status_code == 403, (method, path, role, r.text)
            assert r.json()["error"]["code"] == "forbidden"
            checked += 1
    assert checked >= 8


def test_tenant_b_never_reaches_tenant_a(world: World) -> None:
    a_count = len(_documents(world, "alpha"))
    sent = ""
    for (method, path), call in route_table(world).items():
        r = request(world, method, path, call, world.keys["beta-admin"].headers)
        assert r.status_code == call.b_status, (method, path, r.status_code, r.text)
        sent = assert_no_alpha_data(world, r, sent)
    # A's document, conversation and keys are all still there.
    assert len(_documents(world, "alpha")) == a_count
    a = world.keys["alpha-reader"].headers
    assert world.client.get(f"/v1/conversations/{world.a_conversation}", headers=a).status_code == 200
    assert world.client.get(f"/v1/jobs/{world.a_job}", headers=a).status_code == 200
    trace = world.client.get(f"/v1/responses/{world.a_response}", headers=a).json()
    assert (trace["tenant"], trace["key_id"]) == ("alpha", world.keys["alpha-reader"].id)
    keys = world.client.get("/v1/admin/keys", headers=world.keys["alpha-admin"].headers).json()["keys"]
    assert {k["id"]: k["active"] for k in keys}[world.keys["alpha-reader"].id] is True


def test_a_key_limited_to_other_collections_sees_hr_as_missing(world: World) -> None:
    limited = world.keys["alpha-other-only"].headers
    for method, path, body in (
        ("GET", "/v1/collections/hr/documents", None),
        ("GET", f"/v1/collections/hr/documents/{world.a_doc}", None),
        ("GET", f"/v1/jobs/{world.a_job}", None),
        ("GET", f"/v1/responses/{world.a_response}", None),
        ("POST", f"/v1/responses/{world.a_response}/feedback", {"rating": "up"}),
        ("POST", f"/v1/jobs/{world.a_job}/cancel", None),
        ("POST", f"/v1/jobs/{world.a_job}/retry", None),
        ("POST", "/v1/chat", {"message": "per-diem?", "collection": "hr"}),
        ("POST", "/v1/retrieve", {"query": "per-diem", "collection": "hr"}),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "hr", "messages": [{"role": "user", "content": "per-diem?"}]},
        ),
    ):
        r = world.client.request(method, path, json=body, headers=limited)
        assert r.status_code == 404, (path, r.text)
        assert_no_alpha_data(world, r)
    assert world.client.get("/v1/models", headers=limited).json()["data"] == []


def _documents(w: World, tenant: str) -> list[dict[str, Any]]:
    r = w.client.get("/v1/collections/hr/documents", headers=w.keys[f"{tenant}-reader"].headers)
    assert r.status_code == 200, r.text
    return r.json()["documents"]  # type: ignore[no-any-return]


def test_same_collection_name_same_file_name_two_tenants_two_documents(world: World) -> None:
    assert world.a_doc != world.b_doc  # ids are keyed per tenant, not sha1(collection, name)
    for tenant, own, other in (("alpha", "65 EUR", "90 EUR"), ("beta", "90 EUR", "65 EUR")):
        headers = world.keys[f"{tenant}-reader"].headers
        r = world.client.post(
            "/v1/chat", json={"message": "What is the per-diem?", "collection": "hr"}, headers=headers
        )
        assert r.status_code == 200, r.text
        cited = r.json()["citations"]
        assert cited and all(own in c["text"] and other not in c["text"] for c in cited)
        hits = world.client.post(
            "/v1/retrieve", json={"query": "per-diem", "collection": "hr"}, headers=headers
        )
        results = hits.json()["results"]
        assert own in results[0]["text"] and not any(other in h["text"] for h in results)
        assert world.client.get("/v1/models", headers=headers).json()["data"][0]["id"] == "hr"


def test_openai_client_sees_only_its_tenants_collections_and_citations(world: World) -> None:
    from openai import OpenAI

    api = str(world.client.base_url).rstrip("/") + "/v1"
    for tenant, own in (("alpha", "65 EUR"), ("beta", "90 EUR")):
        client = OpenAI(api_key=world.keys[f"{tenant}-reader"].key, base_url=api, max_retries=0)
        assert [m.id for m in client.models.list()] == ["hr"]
        answer = client.chat.completions.create(
            model="hr", messages=[{"role": "user", "content": "What is the per-diem?"}]
        )
        citations = answer.model_extra["citations"]  # type: ignore[index]
        assert citations and all(own in c["text"] for c in citations)
    with pytest.raises(Exception) as refused:
        OpenAI(api_key="rsk_wrong", base_url=api, max_retries=0).models.list()
    assert getattr(refused.value, "status_code", None) == 401


def test_audit_records_writes_with_who_what_and_outcome_per_tenant(world: World) -> None:
    c, a_admin = world.client, world.keys["alpha-admin"].headers
    made = c.post(
        "/v1/admin/keys", json={"name": "temp", "role": "writer", "expires_in": "1h"}, headers=a_admin
    )
    assert made.status_code == 201 and made.json()["key"].startswith("rsk_")
    temp = Key(made.json()["id"], made.json()["key"])
    r = c.post(
        "/v1/collections/hr/documents", files=[("files", ("temp.txt", b"Temporary."))], headers=temp.headers
    )
    doc = r.json()["documents"][0]["document_id"]
    _wait(c, r.json()["job_id"], temp)
    assert c.delete(f"/v1/collections/hr/documents/{doc}", headers=temp.headers).status_code == 204
    assert c.delete(f"/v1/collections/hr/documents/{doc}", headers=temp.headers).status_code == 404
    assert c.delete(f"/v1/admin/keys/{temp.id}", headers=a_admin).status_code == 200
    assert c.get("/v1/models", headers=temp.headers).status_code == 401  # this replica: at once

    entries = c.get("/v1/admin/audit", params={"since": "1h"}, headers=a_admin).json()["entries"]
    seen = [
        (e["action"], e["outcome"], e["status"], e["key_id"])
        for e in entries
        if e["key_id"] in (temp.id, world.keys["alpha-admin"].id)
    ]
    assert ("key.create", "ok", None, world.keys["alpha-admin"].id) in seen
    assert ("document.upload", "ok", None, temp.id) in seen
    assert ("document.delete", "ok", None, temp.id) in seen
    assert ("document.delete", "error", 404, temp.id) in seen
    assert ("key.revoke", "ok", None, world.keys["alpha-admin"].id) in seen
    upload = next(e for e in entries if e["action"] == "document.upload" and e["key_id"] == temp.id)
    assert upload["collection"] == "hr" and upload["object_id"] and upload["tenant"] == "alpha"
    assert upload["at"] > time.time() - 3600 and upload["request_id"]
    # B's audit log holds none of A's entries.
    b_entries = c.get("/v1/admin/audit", headers=world.keys["beta-admin"].headers).json()["entries"]
    assert b_entries and {e["tenant"] for e in b_entries} == {"beta"}


def test_keys_are_never_stored_or_logged_in_plaintext(world: World) -> None:
    keys = [k.key for k in world.keys.values()]
    for path in world.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(k.encode() in data for k in keys), path
    logged = "\n".join(world.log_lines)
    assert logged and not any(k in logged for k in keys)
    listed = world.client.get("/v1/admin/keys", headers=world.keys["alpha-admin"].headers).text
    assert not any(k in listed for k in keys) and "hash" not in listed


def test_admin_cannot_grant_beyond_its_own_collections(world: World) -> None:
    r = world.client.post(
        "/v1/admin/keys",
        json={"name": "wider", "role": "reader", "collections": ["hr"]},
        headers=world.keys["alpha-other-only"].headers,
    )
    assert r.status_code == 403
    r = world.client.post(
        "/v1/admin/keys", json={"name": "x", "role": "root"}, headers=world.keys["alpha-admin"].headers
    )
    assert r.status_code == 422


def test_metrics_take_the_metrics_token(tmp_path: Path, make_container) -> None:  # type: ignore[no-untyped-def]
    from app.factory import create_app

    container = make_container(
        auth={"mode": "api_key", "metrics_token": "scrape-me"}, llm={"provider": "scripted"}
    )
    with TestClient(create_app(container=container)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and "ragserver_auth_failures_total" in ok.text
        # The token opens /metrics only.
        assert client.get("/v1/models", headers={"Authorization": "Bearer scrape-me"}).status_code == 401
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code in (200, 503)


def test_an_unguarded_route_stops_the_app_from_starting(make_container) -> None:  # type: ignore[no-untyped-def]
    from app.factory import create_app

    app = create_app(container=make_container(auth={"mode": "api_key"}))

    @app.get("/v1/leaky")
    async def leaky() -> dict[str, str]:
        return {"everything": "here"}

    with pytest.raises(RuntimeError, match="/v1/leaky"), TestClient(app):
        pass


def test_tokens_a_minute_are_limited_and_conversation_deletes_audited(make_container) -> None:  # type: ignore[no-untyped-def]
    from app.factory import create_app

    with ScriptedOpenAIServer(default_reply="Etna is in Sicily [1].") as llm:  # 5 completion tokens
        container = make_container(llm=scripted_llm(llm), auth={"mode": "api_key"})
        record, key = container.keys.create(tenant="acme", name="small", role="writer", tpm=4)
        headers = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(container=container)) as client:
            r = client.post(
                "/v1/collections/kb/documents", files=[("files", ("etna.txt", b"Etna."))], headers=headers
            )
            _wait(client, r.json()["job_id"], Key(record.key_id, key))  # type: ignore[arg-type]
            first = client.post(
                "/v1/chat", json={"message": "Where is Etna?", "collection": "kb"}, headers=headers
            )
            assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == 5
            second = client.post(
                "/v1/chat", json={"message": "Where is Etna?", "collection": "kb"}, headers=headers
            )
            assert second.status_code == 429, second.text
            assert (
                second.json()["error"]["code"] == "rate_limited"
                and "tokens" in second.json()["error"]["message"]
            )
            assert 1 <= int(second.headers["retry-after"]) <= 60
            conversation = first.json()["conversation_id"]
            assert client.delete(f"/v1/conversations/{conversation}", headers=headers).status_code == 204
            assert client.delete(f"/v1/conversations/{conversation}", headers=headers).status_code == 404
        entries = container.audit.query(tenant="acme", action="conversation.delete")
        assert [(e.outcome, e.status, e.object_id, e.key_id) for e in entries] == [
            ("error", 404, conversation, record.key_id),
            ("ok", None, conversation, record.key_id),
        ]
