"""The app with auth on (api_key) on a fresh data dir, the session's embedder, a scripted LLM, and one
admin key per tenant asked for: for tests that call admin endpoints as tenants."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.devtools.scripted_llm import ScriptedOpenAIServer
from app.settings import Settings
from tests.api.conftest import scripted_llm


@contextmanager
def admin_clients(
    data_dir: Path, embedder: Any, tenants: tuple[str, ...]
) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    """(client, the Authorization headers of each tenant's admin key)."""
    from app.container import Container
    from app.factory import create_app

    with ScriptedOpenAIServer(default_reply="ok") as llm:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=data_dir,
            llm=scripted_llm(llm),
            embedding={"query_backend": "torch"},
            auth={"mode": "api_key"},
        )
        container = Container(settings, embedder=embedder)
        headers = {}
        for tenant in tenants:
            _, key = container.keys.create(tenant=tenant, name=f"{tenant} admin", role="admin")
            headers[tenant] = {"Authorization": f"Bearer {key}"}
        with TestClient(create_app(container=container), raise_server_exceptions=False) as client:
            yield client, headers
