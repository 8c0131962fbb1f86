"""`ragserver collections versions|rebuild|rollback|prune C`: blue/green collections (and `profile C`, a
collection's answer profile, in app/cli/decisions.py beside the experiments that write it).

Given `--url`, the command asks that running server (its admin endpoints; `--api-key` or
RAGSERVER_API_KEY when auth is on), which is the way while a server runs: two processes must not
write one embedded Chroma directory. Without it, the command works on the data dir directly.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from app.cli.common import KeyOpt, TenantOpt, UrlOpt, call_server, container_for, fail

collections_app = typer.Typer(
    help="Blue/green collections: versions, rebuild, rollback, prune.", no_args_is_help=True
)


def _show(collection: str, versions: list[dict[str, Any]]) -> None:
    typer.echo(f"{'':2}{'version':8}{'state':10}{'documents':>10}{'chunks':>8}  model / chunking")
    for v in versions:
        overlap = v.get("chunk_overlap")
        chunking = f"{v.get('chunk_size') or '-'}/{'-' if overlap is None else overlap}"
        typer.echo(
            f"{'*' if v.get('active') else ' ':2}{v['label']:8}{v['state']:10}"
            f"{v.get('documents') if v.get('documents') is not None else '':>10}"
            f"{v.get('chunks') if v.get('chunks') is not None else '':>8}  "
            f"{v.get('embedding_model') or '(configured model)'} {chunking}"
            + (f"  error: {v['error']}" if v.get("error") else "")
        )


@collections_app.command("versions")
def versions(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """The collection's versions (* serves). The last line is JSON."""
    if url:
        data = call_server(url, api_key, "GET", f"/v1/collections/{collection}/versions")
    else:
        with container_for(collection, must_exist=False, tenant=tenant) as (container, store):
            from ingest.vector_index import CollectionNotFound

            try:
                rows = container.versions.versions(store)
            except CollectionNotFound as exc:
                fail(str(exc))
            data = {
                "collection": collection,
                "active": next((v.label for v in rows if v.active), None),
                "versions": [v.to_dict() for v in rows],
            }
    _show(collection, data["versions"])
    typer.echo(json.dumps(data))


@collections_app.command("rebuild")
def rebuild(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    embedding_model: Annotated[
        str | None,
        typer.Option(
            help="Model directory for the new version, under <data_dir>/models or another of "
            "collections.model_roots (default: the configured model)."
        ),
    ] = None,
    chunk_size: Annotated[
        int | None, typer.Option(min=16, help="Tokens per chunk (default: settings).")
    ] = None,
    chunk_overlap: Annotated[int | None, typer.Option(min=0)] = None,
    wait: Annotated[bool, typer.Option(help="With --url: wait until the new version serves.")] = True,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Fill a new version of the collection from the serving one, then switch to it. The old version
    keeps serving until then and is kept (roll back with `rollback`, drop with `prune`)."""
    if chunk_size is not None and chunk_overlap is not None and chunk_overlap >= chunk_size:
        fail("--chunk-overlap must be smaller than --chunk-size")
    body: dict[str, Any] = {
        "embedding_model": embedding_model,
        "chunk_size": chunk_size,
        "chunk_overlap": chunk_overlap,
    }
    if url:
        started = call_server(url, api_key, "POST", f"/v1/collections/{collection}/rebuild", body)
        typer.echo(f"rebuilding {collection} into {started['label']}", err=True)
        row = started
        while wait and row["state"] == "building":
            time.sleep(1.0)
            data = call_server(url, api_key, "GET", f"/v1/collections/{collection}/versions")
            row = next(v for v in data["versions"] if v["version"] == started["version"])
        if row["state"] == "failed":
            fail(f"rebuild into {row['label']} failed: {row.get('error')}")
        typer.echo(json.dumps(row))
        return
    from tqdm import tqdm

    from app.services.collection_versions import VersionConflict
    from app.services.errors import InvalidInput
    from ingest.vector_index import CollectionNotFound

    with container_for(collection, tenant=tenant) as (container, store):
        try:
            target = container.versions.start_rebuild(store, **body)
        except (CollectionNotFound, VersionConflict, InvalidInput, OSError, ValueError) as exc:
            fail(str(exc))
        bar = tqdm(desc=f"rebuild {collection} -> {target.label}", unit="doc", disable=None)
        try:
            done = container.versions.run_rebuild(target, on_progress=lambda n: bar.update(n - bar.n))
        except Exception as exc:
            fail(f"rebuild into {target.label} failed: {exc}")
        finally:
            bar.close()
    typer.echo(json.dumps({**done.to_dict(), "collection": collection}))


@collections_app.command("rollback")
def rollback(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    to: Annotated[
        int | None, typer.Option(min=1, help="Version to serve (default: the previous one).")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Serve the previous version again (or version --to)."""
    if url:
        row = call_server(url, api_key, "POST", f"/v1/collections/{collection}/rollback", {"version": to})
    else:
        from app.services.collection_versions import VersionConflict
        from ingest.vector_index import CollectionNotFound

        with container_for(collection, tenant=tenant) as (container, store):
            try:
                row = {**container.versions.rollback(store, to).to_dict(), "collection": collection}
            except (CollectionNotFound, VersionConflict) as exc:
                fail(str(exc))
    typer.echo(f"{collection} now served by {row['label']}", err=True)
    typer.echo(json.dumps(row))


@collections_app.command("prune")
def prune(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    keep: Annotated[int, typer.Option(min=0, help="Inactive ready versions to keep, newest first.")] = 0,
    abandoned: Annotated[
        bool, typer.Option(help="Also drop a version left building by a rebuild whose process died.")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Drop the versions that do not serve the collection (but the newest --keep)."""
    if url:
        body = {"keep": keep, "abandoned": abandoned}
        data = call_server(url, api_key, "POST", f"/v1/collections/{collection}/prune", body)
    else:
        with container_for(collection, tenant=tenant) as (container, store):
            data = {
                "collection": collection,
                "pruned": [v.label for v in container.versions.prune(store, keep, abandoned=abandoned)],
            }
    typer.echo(f"pruned: {', '.join(data['pruned']) or 'nothing'}", err=True)
    typer.echo(json.dumps(data))
