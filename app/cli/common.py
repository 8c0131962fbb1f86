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
def container_for(collection: str | None, *, must_exist: bool = False) -> Iterator[tuple[Container, str]]:
    """The composition root on the environment's settings, and the validated collection name."""
    from ingest.vector_index import InvalidCollectionName, validate_collection_name

    settings = Settings()
    name = collection or settings.server.default_collection
    try:
        validate_collection_name(name)
    except InvalidCollectionName as exc:
        fail(str(exc))
    with open_container_sync(settings) as container:
        if must_exist and not container.store.has_collection(name):
            known = ", ".join(container.store.list_collections()) or "none"
            fail(f"collection {name!r} not found (collections: {known})")
        yield container, name
