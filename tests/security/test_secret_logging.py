"""Secrets never reach the logs: the real server process (`python -m app.cli.main serve`, api_key auth)
is sent keys where clients wrongly put them (query parameters `api_key`, `token`, `key`,
`access_token`, in any case, among other parameters) and a bogus `Authorization: Bearer` header. Each
gets its 401 and its access-log line, with the parameter's value `[redacted]`, in both log formats; no
secret appears anywhere in what the process wrote."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devtools.scripted_llm import ScriptedOpenAIServer
from tests.live_server import NO_MODELS, llm_env, serve_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The query string sent and the path the access log must show for it.
QUERIES = {
    "?api_key=SECRET1": "/v1/models?api_key=[redacted]",
    "?token=SECRET2": "/v1/models?token=[redacted]",
    "?key=SECRET3": "/v1/models?key=[redacted]",
    "?access_token=SECRET5": "/v1/models?access_token=[redacted]",
    "?collection=hr&API_KEY=SECRET6&limit=2": "/v1/models?collection=hr&API_KEY=[redacted]&limit=2",
    "?apikey=SECRET7&apikey=SECRET8": "/v1/models?apikey=[redacted]&apikey=[redacted]",
}
BEARER = "SECRET4"
SECRETS = ["SECRET1", "SECRET2", "SECRET3", BEARER, "SECRET5", "SECRET6", "SECRET7", "SECRET8"]


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(default_reply="unused") as server:
        yield server


def wait_for(lines: list[str], expected: list[str], read) -> list[str]:  # type: ignore[no-untyped-def]
    """The log's lines once all of `expected` are in them (uvicorn writes the access line as the
    response starts, so it is normally there already), or after 5 s."""
    deadline = time.monotonic() + 5
    while not all(any(e in line for line in lines) for e in expected) and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = read()
    return lines


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_in_query_or_header_never_reach_the_logs(
    log_format: str, llm: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    env = llm_env(llm) | NO_MODELS | {"RAGSERVER_AUTH__MODE": "api_key"}
    with serve_process(tmp_path / "data", env, "--log-format", log_format) as server:
        for query in QUERIES:
            assert httpx.get(f"{server.url}/v1/models{query}", timeout=30).status_code == 401
        bearer = {"Authorization": f"Bearer {BEARER}"}
        assert httpx.get(f"{server.url}/v1/models?bearer=1", headers=bearer, timeout=30).status_code == 401
        expected = [*QUERIES.values(), "/v1/models?bearer=1"]
        lines = wait_for(server.log_lines(), expected, server.log_lines)

    logged = "\n".join(lines)
    assert not [s for s in SECRETS if s in logged], logged[-3000:]
    if log_format == "json":
        access = [e for e in (json.loads(line) for line in lines if line.startswith("{"))
                  if e["logger"] == "uvicorn.access"]  # fmt: skip
        paths = {e["path"]: e["status"] for e in access}
        assert {p: paths.get(p) for p in expected} == {p: 401 for p in expected}
        assert all(e["path"] in e["message"] for e in access)
    else:
        access = [line for line in lines if " uvicorn.access " in line]
        for path in expected:
            assert any(f'"GET {path} HTTP/1.1" 401' in line for line in access), (path, access)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/models?collection=hr", "/v1/models?collection=hr"),
        ("/v1/models?Token=abc", "/v1/models?Token=[redacted]"),
        ("/v1/models?api%5Fkey=abc", "/v1/models?api%5Fkey=[redacted]"),
        ("/v1/models?key=", "/v1/models?key=[redacted]"),
        ("/v1/models?keys=1&monkey=2&key", "/v1/models?keys=1&monkey=2&key"),
        ("/v1/models?a=1&&key=x%26y", "/v1/models?a=1&&key=[redacted]"),
    ],
)
def test_redact_query_hides_only_secret_named_parameters(target: str, logged: str) -> None:
    from app.logging_setup import redact_query

    assert redact_query(target) == logged
