"""API keys from the CLI (on the database the server uses, before it starts), and two real server
processes sharing one database and one Redis: a rate limit holds across both, a key revoked through one
fails on the other within 5 s, and neither Redis nor the logs ever hold a key. Also: auth mode `none`
refuses a non-loopback address."""

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
from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.live_server import NO_MODELS, llm_env, serve_process

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(data))
    return data


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_keys_cli_creates_lists_revokes_and_audits(cli_env: Path) -> None:
    made = run("keys", "create", "--tenant", "acme", "--name", "hr-bot", "--role", "writer",
               "--collections", "hr,legal", "--rpm", "30", "--expires-in", "30d")  # fmt: skip
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout.strip().splitlines()[-1])
    assert set(created) == {"id", "key", "tenant"} and created["tenant"] == "acme"
    assert created["key"].startswith("rsk_") and len(created["key"]) >= 40

    listed = run("keys", "list", "--tenant", "acme")
    assert listed.exit_code == 0 and created["key"] not in listed.stdout
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["id"] == created["id"] and row["role"] == "writer" and row["collections"] == ["hr", "legal"]
    assert row["rpm"] == 30 and row["active"] and row["expires_at"] - time.time() > 29 * 86400
    assert run("keys", "list", "--tenant", "other").stdout == ""

    revoked = run("keys", "revoke", created["id"])
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["active"] is False
    assert run("keys", "revoke", "key_nope").exit_code == 2

    audit = run("audit", "--tenant", "acme", "--since", "1h")
    actions = [(e["action"], e["outcome"], e["actor"]) for e in map(json.loads, audit.stdout.splitlines())]
    assert actions == [("key.revoke", "ok", "cli"), ("key.create", "ok", "cli")]
    # Nothing in the data dir holds the key.
    for path in cli_env.rglob("*"):
        assert not path.is_file() or created["key"].encode() not in path.read_bytes()


def test_cli_commands_work_on_a_tenants_collections_and_audit_them(cli_env: Path, tmp_path: Path) -> None:
    doc = tmp_path / "policy.txt"
    doc.write_text("Acme's per-diem is 65 EUR.")
    ingested = run("ingest", str(doc), "--tenant", "acme", "-c", "hr")
    assert ingested.exit_code == 0, ingested.output
    stats = run("stats", "--tenant", "acme", "-c", "hr")
    assert json.loads(stats.stdout.splitlines()[-1])["documents"] == 1
    missing = run("stats", "-c", "hr")  # the default tenant has no hr
    assert missing.exit_code == 2 and "not found" in missing.output
    assert run("search", "per-diem", "--tenant", "acme", "-c", "hr", "--json").stdout.count("65 EUR") == 1
    assert run("ingest", str(doc), "--tenant", "Not_Valid").exit_code == 2
    [entry] = [json.loads(line) for line in run("audit", "--tenant", "acme").stdout.splitlines()]
    assert (entry["action"], entry["actor"], entry["collection"], entry["outcome"]) == (
        "document.ingest",
        "cli",
        "hr",
        "ok",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "Bad_Name", "--name", "x", "--role", "reader"], "invalid tenant name"),
        (["--tenant", "acme", "--name", "x", "--role", "root"], "role must be one of"),
        (["--tenant", "acme", "--name", "x", "--role", "reader", "--expires-in", "soon"], "not a duration"),
        (
            ["--tenant", "acme", "--name", "x", "--role", "reader", "--collections", "a b"],
            "invalid collection",
        ),
    ],
)
def test_keys_cli_refuses_bad_input_clearly(cli_env: Path, args: list[str], message: str) -> None:
    result = run("keys", "create", *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_auth_none_is_refused_off_loopback(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVER_AUTH__MODE", "none")
    result = run("serve", "--host", "0.0.0.0", "--port", "1")
    assert result.exit_code == 2 and "refusing to serve on 0.0.0.0" in result.output


# -- two replicas ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    """Two server processes on one SQLite database and one Redis (rate limits and history there)."""
    root = tmp_path_factory.mktemp("replicas")
    prefix = f"ragserver-test:{os.getpid()}:{time.time_ns()}:"
    with ScriptedOpenAIServer(default_reply="Nothing to cite.") as llm:
        env = (
            llm_env(llm)
            | NO_MODELS
            | {
                "RAGSERVER_AUTH__MODE": "api_key",
                "RAGSERVER_AUTH__RATE_LIMIT_URL": redis_url,
                "RAGSERVER_HISTORY__REDIS_URL": redis_url,
                "RAGSERVER_HISTORY__KEY_PREFIX": prefix,
                "RAGSERVER_DATABASE_URL": f"sqlite:///{root / 'shared.sqlite3'}",
            }
        )
        with serve_process(root / "one", env) as one, serve_process(root / "two", env) as two:
            yield {"one": one, "two": two, "env": env, "root": root}
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def make_key(replicas: dict[str, Any], **options: Any) -> dict[str, str]:
    """A key made with the CLI on the replicas' database."""
    args = ["keys", "create", "--tenant", "acme", "--name", "bot", "--role", options.pop("role", "reader")]
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    env = {
        "RAGSERVER_DATABASE_URL": replicas["env"]["RAGSERVER_DATABASE_URL"],
        "RAGSERVER_DATA_DIR": str(replicas["root"] / "cli"),
    }
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_rate_limit_holds_across_two_replicas(replicas: dict[str, Any], redis_url: str) -> None:
    key = make_key(replicas, rpm=6)
    headers = {"Authorization": f"Bearer {key['key']}"}
    statuses = []
    for i in range(8):
        url = replicas["one" if i % 2 == 0 else "two"].url
        r = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.json()["error"]["code"] == "rate_limited"
    # The key's one-minute window starts at its first request: 6 pass, whichever replica they reach.
    assert statuses == [200] * 6 + [429] * 2, statuses

    # Redis holds counters under the key's id, never the key.
    client = redis.Redis.from_url(redis_url)
    names = [k.decode() for k in client.scan_iter(match="ragserver:limits*")]
    assert any(key["id"] in n for n in names)
    assert not any(key["key"] in n for n in names)
    assert not any(key["key"].encode() in (client.dump(n) or b"") for n in names)


def test_a_key_revoked_on_one_replica_fails_on_the_other_within_5_seconds(replicas: dict[str, Any]) -> None:
    admin = make_key(replicas, role="admin")
    reader = make_key(replicas)
    one, two = replicas["one"].url, replicas["two"].url
    as_reader = {"Authorization": f"Bearer {reader['key']}"}
    assert httpx.get(f"{two}/v1/models", headers=as_reader).status_code == 200  # cached on two now
    r = httpx.delete(
        f"{one}/v1/admin/keys/{reader['id']}", headers={"Authorization": f"Bearer {admin['key']}"}
    )
    assert r.status_code == 200 and r.json()["active"] is False
    revoked_at = time.monotonic()
    assert httpx.get(f"{one}/v1/models", headers=as_reader).status_code == 401
    while httpx.get(f"{two}/v1/models", headers=as_reader).status_code != 401:
        assert time.monotonic() - revoked_at < 5.0, "still accepted on the other replica after 5 s"
        time.sleep(0.1)
    for name in ("one", "two"):
        log = replicas[name].log.read_text(errors="replace")
        assert reader["key"] not in log and admin["key"] not in log
