"""`ragserver feedback export`: feedback as a regression set for `ragserver eval rag`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import fail, trace_scope
from app.container import open_container_sync
from app.settings import Settings

feedback_app = typer.Typer(help="Feedback on answers: export it as a regression set.", no_args_is_help=True)


@feedback_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="The .jsonl file to write.")],
    rating: Annotated[str | None, typer.Option(help="Only answers rated up or down.")] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Only this collection.")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Whose collections (default: the default tenant).")
    ] = None,
    since: Annotated[str | None, typer.Option(help='Answers since "24h", "7d", or a Unix timestamp.')] = None,
    reviewed: Annotated[
        bool, typer.Option(help="Only feedback a reviewer marked for the regression set.")
    ] = False,
) -> None:
    """Write one question per answer with feedback, in the format `ragserver eval rag --questions FILE
    --collection C` runs: the question (with its conversation when it was a follow-up), corrections as
    the reference answer, the documents an up-vote confirmed as gold, and the source response id. Works on
    the data dir (or database) of a running server. The last line is a JSON object."""
    from app.auth.principal import Principal
    from ingest.vector_index import DEFAULT_TENANT

    if rating not in (None, "up", "down"):
        fail("--rating must be up or down")
    since_at, _ = trace_scope(since, collection, tenant)  # checked here: a bad value fails the command
    operator = Principal.operator(tenant or DEFAULT_TENANT)
    with open_container_sync(Settings()) as container:
        rows = asyncio.run(
            container.traces.regression_rows(
                principal=operator,
                rating=rating,
                collection=collection,
                since=since_at,
                reviewed_only=reviewed,
            )
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    typer.echo(json.dumps({"out": str(out), "questions": len(rows)}))
