"""`ragserver monitor report`: live quality over time, from the response traces."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import trace_scope
from app.container import open_container_sync
from app.settings import Settings

monitor_app = typer.Typer(help="Live quality: reports over the response traces.", no_args_is_help=True)


@monitor_app.command("report")
def report(
    out: Annotated[Path, typer.Option("--out", help="The folder for summary.json and report.html.")],
    since: Annotated[str, typer.Option(help='The period: "24h", "7d", or a Unix timestamp.')] = "7d",
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Only this collection.")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Whose collection (default: the default tenant).")
    ] = None,
) -> None:
    """Volume, latency, thumbs-up rate, feedback rate, engagement, the retrieval top-score distribution
    and its drift, no-answer rate and online judge scores over time, split by collection, prompt and
    model: `summary.json` and a self-contained `report.html`. Works on the data dir (or database) of a
    running server. The last line is a JSON object."""
    from app.services.monitor_report import write_report

    since_at, stores = trace_scope(since, collection, tenant)
    with open_container_sync(Settings()) as container:
        traces = asyncio.run(
            container.trace_store.search(since=since_at, collections=stores, limit=1_000_000)
        )
    if tenant and not collection:
        traces = [t for t in traces if t.tenant == tenant]
    summary = write_report(traces, out, since=since_at)
    overall = summary["overall"]
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "answers": overall["answers"],
                "thumbs_up_rate": overall["thumbs_up_rate"],
                "abstained_rate": overall["abstained_rate"],
            }
        )
    )
