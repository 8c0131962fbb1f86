"""`ragserver routes ...`: a collection's routing chain and curated answers (docs/ROUTING.md).

Given `--url`, each command asks that running server's admin API (`--api-key` or RAGSERVER_API_KEY);
without it, it works on the data dir's database directly as the operator of `--tenant`. Every command's
last line is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import KeyOpt, TenantOpt, UrlOpt, call_server, emit_json, fail, run_local
from app.container import Container

routes_app = typer.Typer(help="Routing chains (rules, curated answers, model policy).", no_args_is_help=True)
curated_app = typer.Typer(help="Curated answers: candidates from reviewed corrections, approve, reject.")
routes_app.add_typer(curated_app, name="curated")

CollectionArg = Annotated[str, typer.Argument(help="Collection name.")]


@routes_app.command("set")
def set_(
    collection: CollectionArg,
    file: Annotated[
        Path, typer.Option("--file", "-f", exists=True, dir_okay=False, help="The chain's YAML.")
    ],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Replace the collection's routing chain (every replica uses it within experiments.refresh_s)."""
    from app.routing.chain import parse_chain
    from app.services.errors import InvalidInput

    text = file.read_text(encoding="utf-8")
    try:
        chain = parse_chain(text)
    except InvalidInput as exc:
        fail(str(exc))
    if url:
        path = f"/v1/admin/collections/{collection}/routes"
        data = call_server(url, api_key, "PUT", path, content=text, content_type="application/yaml")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.routing.set_chain(p, collection, chain)

        data = run_local(tenant, work)
    emit_json(data)


@routes_app.command("show")
def show(
    collection: CollectionArg, url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None
) -> None:
    """The collection's routing chain."""
    if url:
        data = call_server(url, api_key, "GET", f"/v1/admin/collections/{collection}/routes")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.routing.show(p, collection)

        data = run_local(tenant, work)
    for stage in (data["chain"] or {}).get("stages", []):
        typer.echo(f"{stage['type']:8} {stage['id']}", err=True)
    emit_json(data)


@routes_app.command("clear")
def clear(
    collection: CollectionArg, url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None
) -> None:
    """Remove the collection's routing chain (every question goes to the LLM)."""
    if url:
        data = call_server(url, api_key, "DELETE", f"/v1/admin/collections/{collection}/routes")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.routing.set_chain(p, collection, None)

        data = run_local(tenant, work)
    emit_json(data)


@curated_app.command("list")
def curated_list(
    collection: CollectionArg,
    status: Annotated[str | None, typer.Option(help="candidate, approved, stale or rejected.")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """The collection's curated answers."""
    if status is not None and status not in ("candidate", "approved", "stale", "rejected"):
        fail("--status is candidate, approved, stale or rejected")
    if url:
        query = f"?status={status}" if status else ""
        data = call_server(url, api_key, "GET", f"/v1/admin/collections/{collection}/curated{query}")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return {"curated": [i.to_dict() for i in await c.routing.list_curated(p, collection, status)]}

        data = run_local(tenant, work)
    for item in data["curated"]:
        typer.echo(f"{item['id']:22} {item['status']:9} {item['question'][:70]}", err=True)
    emit_json(data)


@curated_app.command("add")
def curated_add(
    collection: CollectionArg,
    question: Annotated[str, typer.Option(help="The question it answers.")],
    answer: Annotated[str, typer.Option(help="The answer, as it will be served.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """A curated answer written by hand (a candidate until approved)."""
    if url:
        body = {"question": question, "answer": answer}
        data = call_server(url, api_key, "POST", f"/v1/admin/collections/{collection}/curated", body)
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return (await c.routing.add_curated(p, collection, question, answer)).to_dict()

        data = run_local(tenant, work)
    emit_json(data)


def _review(
    action: str, collection: str, item_id: str, url: str | None, key: str | None, tenant: str | None
) -> None:
    if url:
        data = call_server(url, key, "POST", f"/v1/admin/collections/{collection}/curated/{item_id}/{action}")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return (await c.routing.review(p, collection, item_id, action)).to_dict()

        data = run_local(tenant, work)
    typer.echo(json.dumps(data))


@curated_app.command("approve")
def curated_approve(
    collection: CollectionArg,
    item_id: Annotated[str, typer.Argument(help="The curated answer's id (cur_...).")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Approve: served from now on to questions close enough to its own."""
    _review("approve", collection, item_id, url, api_key, tenant)


@curated_app.command("reject")
def curated_reject(
    collection: CollectionArg,
    item_id: Annotated[str, typer.Argument(help="The curated answer's id (cur_...).")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Reject a candidate (or withdraw an approved answer)."""
    _review("reject", collection, item_id, url, api_key, tenant)
