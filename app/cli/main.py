"""The `ragserver` command line: ingest, search, docs, stats, serve, bench, eval."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.bench.abuse import bench_abuse
from app.bench.bluegreen import bench_bluegreen
from app.bench.ingest import bench_ingest
from app.bench.profile import bench_profile
from app.bench.queries import bench_queries
from app.bench.scale import bench_scale
from app.bench.serve import bench_serve
from app.cli.collections import collections_app
from app.cli.common import CollectionOpt, TenantOpt, container_for, fail, parse_json_option
from app.cli.db import db_app
from app.cli.decisions import experiments_app, models_app
from app.cli.dev import dev_app
from app.cli.eval_answerability import eval_answerability
from app.cli.eval_rag import compare as eval_compare
from app.cli.eval_rag import rag as eval_rag
from app.cli.eval_retrieval import retrieval
from app.cli.feedback import feedback_app
from app.cli.keys import audit, keys_app
from app.cli.monitor import monitor_app
from app.cli.routes import routes_app
from app.cli.tune_embedder import split_qrels, tune_embedder
from app.cli.tune_retrieval import tune_retrieval

app = typer.Typer(help="ragserver: a RAG application server.", no_args_is_help=True, add_completion=False)
docs_app = typer.Typer(help="List or delete documents.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
eval_app = typer.Typer(help="Offline evaluation runs.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")
app.add_typer(bench_app, name="bench")
app.add_typer(eval_app, name="eval")
app.add_typer(db_app, name="db")
app.add_typer(dev_app, name="dev")
app.add_typer(keys_app, name="keys")
app.add_typer(feedback_app, name="feedback")
app.add_typer(monitor_app, name="monitor")
app.add_typer(collections_app, name="collections")
app.add_typer(models_app, name="models")
app.add_typer(experiments_app, name="experiments")
app.add_typer(routes_app, name="routes")
tune_app = typer.Typer(
    help="Tune the embedder and retrieval settings on your own data.", no_args_is_help=True
)
tune_app.command("retrieval")(tune_retrieval)
tune_app.command("embedder")(tune_embedder)
tune_app.command("split-qrels")(split_qrels)
app.add_typer(tune_app, name="tune")
app.command("audit")(audit)
bench_app.command("ingest")(bench_ingest)
bench_app.command("serve")(bench_serve)
bench_app.command("profile")(bench_profile)
bench_app.command("scale")(bench_scale)
bench_app.command("queries")(bench_queries)
bench_app.command("abuse")(bench_abuse)
bench_app.command("bluegreen")(bench_bluegreen)
eval_app.command("retrieval")(retrieval)
eval_app.command("rag")(eval_rag)
eval_app.command("compare")(eval_compare)
eval_app.command("answerability")(eval_answerability)

console = Console(stderr=True)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders (recursively) or .jsonl corpora.")],
    collection: CollectionOpt = None,
    tenant: TenantOpt = None,
    metadata: Annotated[
        str | None, typer.Option(help="JSON object added to every document's metadata.")
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(help="Delete documents previously ingested from these folders whose files are gone."),
    ] = False,
) -> None:
    """Ingest documents; unchanged ones are skipped, changed ones replaced. Exit code 1 if any file failed."""
    from app.auth.principal import Principal
    from ingest.vector_index import split_store_name

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or directory: {', '.join(missing)}")
    extra = parse_json_option(metadata, "--metadata")
    with container_for(collection, tenant=tenant) as (container, name):
        from tqdm import tqdm

        bar = tqdm(desc="ingest", unit="doc", file=sys.stderr, disable=None)

        def progress(doc: str, status: str, error: str | None) -> None:
            bar.update(1)
            if error:
                bar.write(f"FAILED {doc}: {error}", file=sys.stderr)

        owner, bare = split_store_name(name)
        documents = container.documents
        roots = [str(p.resolve()) for p in paths if p.is_dir()]
        report = documents.ingest_local(
            bare,
            documents.load_local(paths, metadata=extra),
            principal=Principal.operator(owner),
            on_document=progress,
            # Documents once ingested from these folders whose files are gone.
            prune=(lambda r: any(r.source.startswith(root + "/") for root in roots)) if prune else None,
        )
        bar.close()
        typer.echo(json.dumps({"collection": name, **report.to_dict()}))
        if not report.ok:
            raise typer.Exit(code=1)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt = None,
    tenant: TenantOpt = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=200, help="How many chunks.")] = 10,
    mode: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid (default from settings).")] = None,
    filters: Annotated[
        str | None, typer.Option("--filter", help='JSON filters, e.g. {"source": "a.pdf"}.')
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Search a collection and print ranked chunks with scores and sources."""
    from app.retrieval.retriever import RetrievalError
    from app.services.limits import check_filters
    from ingest.filters import FilterError

    with container_for(collection, must_exist=True, tenant=tenant) as (container, name):
        serving = container.versions.serving(name)
        try:
            flt = check_filters(parse_json_option(filters, "--filter"), container.settings.limits)
            hits = serving.retriever.retrieve(serving.physical, query, top_k=k, mode=mode, filters=flt)
        except (FilterError, RetrievalError) as exc:
            fail(str(exc))
        rows = [
            {
                "rank": i,
                "score": round(h.score, 4),
                "document_id": h.doc_id,
                "chunk_id": h.chunk_id,
                "source": h.metadata.get("source"),
                "page": h.metadata.get("page"),
                "text": h.text,
            }
            for i, h in enumerate(hits, start=1)
        ]
        if as_json:
            typer.echo(json.dumps(rows, ensure_ascii=False))
            return
        table = Table("#", "score", "source", "text")
        for r in rows:
            where = f"{r['source']}" + (f" p.{r['page']}" if r["page"] else "")
            table.add_row(str(r["rank"]), f"{r['score']:.4f}", where, " ".join(str(r["text"]).split())[:160])
        Console().print(table)


@docs_app.command("list")
def docs_list(
    collection: CollectionOpt = None,
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """List documents of a collection as JSON lines."""
    with container_for(collection, must_exist=True, tenant=tenant) as (container, name):
        physical = container.versions.resolve(name).physical
        for record in container.store.list_documents(physical, limit=limit, offset=offset):
            typer.echo(json.dumps(record.to_dict(), ensure_ascii=False))


@docs_app.command("delete")
def docs_delete(
    document_ids: Annotated[list[str], typer.Argument(help="Document ids to delete.")],
    collection: CollectionOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Delete documents and all their chunks (through the service the API's DELETE uses: each one
    audited as `document.delete`). Exit code 1 if any id was not found."""
    from app.auth.principal import Principal
    from app.services.document_service import DocumentNotFound
    from ingest.vector_index import split_store_name

    with container_for(collection, must_exist=True, tenant=tenant) as (container, name):
        owner, bare = split_store_name(name)
        principal = Principal.operator(owner)

        async def delete_all() -> list[str]:
            missing = []
            for document_id in document_ids:
                try:
                    await container.documents.delete_document(bare, document_id, principal=principal)
                except DocumentNotFound:
                    missing.append(document_id)
            return missing

        missing = asyncio.run(delete_all())
        deleted = len(document_ids) - len(missing)
        typer.echo(json.dumps({"deleted": deleted, "requested": len(document_ids), "not_found": missing}))
        if missing:
            raise typer.Exit(code=1)


@app.command()
def stats(collection: CollectionOpt = None, tenant: TenantOpt = None) -> None:
    """Document and chunk counts; the last line is a JSON object."""
    with container_for(collection, must_exist=True, tenant=tenant) as (container, name):
        version = container.versions.resolve(name)
        physical = version.physical
        docs, chunks = container.store.count_documents(physical), container.store.count_chunks(physical)
        typer.echo(f"collection {name} ({version.label}): {docs} documents, {chunks} chunks")
        typer.echo(
            json.dumps({"collection": name, "version": version.label, "documents": docs, "chunks": chunks})
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text | json: one JSON object a line (default server.log_format).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Default server.log_level (INFO).")] = None,
    limit_concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Connections + requests at once; beyond, 503 (server.limit_concurrency)."),
    ] = None,
) -> None:
    """Start the HTTP API. SIGTERM stops accepting connections, gives running requests
    server.shutdown_timeout_s to finish, cancels the rest (their generations stop), then shuts down."""
    import uvicorn

    from app.factory import create_app, insecure_binding
    from app.logging_setup import configure_logging
    from app.settings import Settings

    settings = Settings()
    fmt = log_format or settings.server.log_format
    if fmt not in ("text", "json"):
        fail(f"--log-format must be text or json, not {fmt!r}")
    level = (log_level or settings.server.log_level).upper()
    try:
        configure_logging(level, fmt)
    except ValueError as exc:
        fail(str(exc))
    settings.server.log_format, settings.server.log_level = fmt, level  # type: ignore[assignment]
    bind = host or settings.server.host
    refusal = insecure_binding(settings, bind)
    if refusal:
        fail(refusal)
    uvicorn.run(
        create_app(settings),
        host=bind,
        port=port or settings.server.port,
        # Logging is configured above: uvicorn's loggers write through the same handler and format.
        log_config=None,
        access_log=True,
        limit_concurrency=limit_concurrency or settings.server.limit_concurrency,
        timeout_graceful_shutdown=settings.server.shutdown_timeout_s,  # type: ignore[arg-type]
    )


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Stop once the queue is empty.")] = False,
    log_format: Annotated[str | None, typer.Option(help="text | json (default server.log_format).")] = None,
) -> None:
    """Run ingestion jobs from the Redis queue (RAGSERVER_JOBS__RUNNER=queue on the API replicas), one
    at a time, with a reaper that re-queues jobs whose worker died. SIGTERM: the running job stops at its
    next boundary and another worker finishes it."""
    import signal

    from app.jobs.worker import run_worker
    from app.logging_setup import configure_logging
    from app.settings import Settings

    settings = Settings()
    configure_logging(settings.server.log_level.upper(), log_format or settings.server.log_format)
    if not settings.shared_redis_url:
        fail("the worker needs the queue's Redis: set RAGSERVER_REDIS_URL or RAGSERVER_JOBS__REDIS_URL")

    async def _main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await run_worker(settings, burst=burst)
        except asyncio.CancelledError:
            pass

    asyncio.run(_main())


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
