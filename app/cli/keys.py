"""`ragserver keys create|list|revoke` and `ragserver audit`: on the database the server uses (the
settings' RAGSERVER_DATABASE_URL, else the SQLite file under the data dir), so keys can be made before
the server first starts. The CLI acts as the operator of the tenant it names."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from app.cli.common import fail
from app.container import open_container_sync
from app.settings import Settings

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to (created with its first key).")],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. the app using it.")],
    role: Annotated[str, typer.Option(help="reader | writer | admin")],
    collections: Annotated[
        str | None, typer.Option(help="Comma-separated collections the key may touch (default: all).")
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(min=1, help="Requests a minute (default auth.default_rpm).")
    ] = None,
    tpm: Annotated[
        int | None, typer.Option(min=1, help="Generated tokens a minute (default auth.default_tpm).")
    ] = None,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime: 90s, 15m, 12h, 30d, 2w.")] = None,
) -> None:
    """Make a key and print it once; the last line is JSON {"id", "key", "tenant"}."""
    from app.auth.principal import Principal
    from app.services.errors import ServiceError
    from ingest.vector_index import InvalidTenantName, validate_tenant_name

    try:
        validate_tenant_name(tenant)
    except InvalidTenantName as exc:
        fail(str(exc))
    names = [c.strip() for c in collections.split(",") if c.strip()] if collections is not None else None
    with open_container_sync(Settings()) as container:
        try:
            record, key = asyncio.run(
                container.key_admin.create(
                    Principal.operator(tenant),
                    name=name,
                    role=role,
                    collections=names,
                    rpm=rpm,
                    tpm=tpm,
                    expires_in=expires_in,
                )
            )
        except (ServiceError, ValueError) as exc:
            fail(getattr(exc, "message", str(exc)))
    typer.echo(f"Created key {record.key_id} ({record.role}) for tenant {record.tenant}.", err=True)
    typer.echo("The key is shown once and stored only as a hash: keep it now.", err=True)
    typer.echo(json.dumps({"id": record.key_id, "key": key, "tenant": record.tenant}))


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """Keys as JSON lines (id, tenant, name, role, prefix, limits, dates; never the key)."""
    with open_container_sync(Settings()) as container:
        for record in container.keys.list_keys(tenant):
            typer.echo(json.dumps(record.to_dict()))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]) -> None:
    """Revoke a key: servers refuse it within auth.key_cache_s (at most 5 s)."""
    from app.auth.admin import KeyNotFound
    from app.auth.principal import Principal

    with open_container_sync(Settings()) as container:
        record = container.keys.get(key_id)
        if record is None:
            fail(f"key {key_id!r} not found")
        try:
            revoked = asyncio.run(container.key_admin.revoke(Principal.operator(record.tenant), key_id))
        except KeyNotFound as exc:
            fail(str(exc))
    typer.echo(json.dumps(revoked.to_dict()))


def audit(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's entries.")] = None,
    since: Annotated[str | None, typer.Option(help='"24h", "7d", or a Unix timestamp.')] = None,
    action: Annotated[
        str | None, typer.Option(help="e.g. document.upload, document.delete, key.revoke")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
) -> None:
    """Print the audit log as JSON lines, newest first."""
    from app.auth.admin import since_timestamp

    try:
        since_at = since_timestamp(since)
    except ValueError as exc:
        fail(str(exc))
    with open_container_sync(Settings()) as container:
        for entry in container.audit.query(tenant=tenant, since=since_at, action=action, limit=limit):
            typer.echo(json.dumps(entry.to_dict()))
