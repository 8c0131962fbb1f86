"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from app.container import Container, open_container_sync
from app.settings import Settings

T = TypeVar("T")

CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Collection name (default from settings).")
]
TenantOpt = Annotated[
    str | None,
    typer.Option("--tenant", help="Whose collection (default: the default tenant, as with auth off)."),
]


UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="A running server (http://host:port); without it, the data dir directly."),
]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", help="Admin key for --url (default: RAGSERVER_API_KEY).")
]


def call_server(
    url: str,
    api_key: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    content: str | None = None,
    content_type: str | None = None,
) -> Any:
    """Call a running server's API as the `--api-key` (or RAGSERVER_API_KEY) caller; its JSON answer,
    or the command fails with the server's error."""
    import httpx

    key = api_key or os.environ.get("RAGSERVER_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, content=content, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    if response.status_code >= 400:
        try:
            error = response.json().get("error", {})
            message = error.get("message") or response.text
        except ValueError:
            message = response.text
        fail(f"{response.status_code}: {message}")
    if "json" not in response.headers.get("content-type", ""):
        return response.text
    return response.json()


def trace_scope(
    since: str | None, collection: str | None, tenant: str | None
) -> tuple[float | None, list[str] | None]:
    """`--since` as a Unix time, and `--collection` of `--tenant` as its store names (None: all); a bad
    value fails the command."""
    from app.auth.admin import since_timestamp
    from ingest.vector_index import DEFAULT_TENANT, InvalidCollectionName, store_name

    try:
        stores = [store_name(tenant or DEFAULT_TENANT, collection)] if collection else None
        return since_timestamp(since), stores
    except (ValueError, InvalidCollectionName) as exc:
        fail(str(exc))


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error to stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def parse_json_option(value: str | None, flag: str) -> dict[str, Any] | None:
    """A JSON-object option, or a clear usage error."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        fail(f"{flag} is not valid JSON: {exc.msg}")
    if not isinstance(parsed, dict):
        fail(f"{flag} must be a JSON object")
    return parsed


@contextmanager
def container_for(
    collection: str | None, *, must_exist: bool = False, tenant: str | None = None
) -> Iterator[tuple[Container, str]]:
    """The composition root on the environment's settings, and the store name of `tenant`'s collection
    (the bare collection name for the default tenant)."""
    from ingest.vector_index import (
        DEFAULT_TENANT,
        InvalidCollectionName,
        InvalidTenantName,
        split_store_name,
        store_name,
    )

    settings = Settings()
    name = collection or settings.server.default_collection
    try:
        store = store_name(tenant or DEFAULT_TENANT, name)
    except (InvalidCollectionName, InvalidTenantName) as exc:
        fail(str(exc))
    with open_container_sync(settings) as container:
        if must_exist and not container.versions.exists(store):
            mine = [
                c
                for t, c in map(split_store_name, container.versions.collections())
                if t == (tenant or DEFAULT_TENANT)
            ]
            fail(f"collection {name!r} not found (collections: {', '.join(mine) or 'none'})")
        yield container, store


def run_local(tenant: str | None, work: Callable[[Container, Any], Coroutine[Any, Any, T]]) -> T:
    """Run `work(container, principal)` on the data dir as the operator of `tenant`; a refused request
    fails the command with the error a client would get."""
    from app.auth.principal import Principal
    from ingest.errors import DomainError, describe
    from ingest.vector_index import DEFAULT_TENANT

    with open_container_sync(Settings()) as container:
        principal = Principal.operator(tenant or DEFAULT_TENANT)
        try:
            return asyncio.run(work(container, principal))
        except DomainError as exc:
            public = describe(exc)
            fail(f"{public.status} {public.code}: {exc}" if public else str(exc))


def parse_file(path: Path, parse: Callable[[str], T]) -> tuple[str, T]:
    """A spec file's text and what `parse` makes of it; a spec it refuses fails the command."""
    from app.services.errors import InvalidInput

    text = path.read_text(encoding="utf-8")
    try:
        return text, parse(text)
    except InvalidInput as exc:
        fail(str(exc))


def emit_json(data: Any) -> None:
    """Print `data` as the command's last line of JSON."""
    typer.echo(json.dumps(data, default=str))
