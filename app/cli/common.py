"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer

from app.container import Container, open_container_sync
from app.settings import Settings

CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Collection name (default from settings).")
]
TenantOpt = Annotated[
    str | None,
    typer.Option("--tenant", help="Whose collection (default: the default tenant, as with auth off)."),
]


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
