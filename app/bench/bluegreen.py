"""`ragserver bench bluegreen`: a collection rebuilt into a new version under a steady chat load.

Starts an instant scripted LLM and the real server (processes on loopback), ingests a corpus, keeps
`--concurrency` clients asking `/v1/chat` while `POST /v1/collections/{c}/rebuild` fills a new
version (another embedding model or chunking) and switches to it, and keeps asking a few seconds past
the switch. Then it checks every answer: the request succeeded, and each chunk its trace shows belongs
to the physical collection of the version the answer names (chunk ids name a document version made
by the version's model and chunking, so two versions share none).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.bench.stack import bench_corpus, bench_questions, ingest_subset, running, stack_env


async def _load(
    url: str, headers: dict[str, str], questions: list[str], concurrency: int, stop: asyncio.Event
) -> tuple[list[dict[str, Any]], list[str]]:
    import httpx

    answers: list[dict[str, Any]] = []
    failures: list[str] = []

    async def client_loop(n: int, client: httpx.AsyncClient) -> None:
        i = n
        while not stop.is_set():
            question = questions[i % len(questions)]
            i += concurrency
            try:
                r = await client.post("/v1/chat", json={"collection": "bench", "message": question})
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if r.status_code == 200:
                answers.append(r.json())
            else:
                failures.append(f"{r.status_code}: {r.text[:200]}")

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        await asyncio.gather(*(client_loop(n, client) for n in range(concurrency)))
    return answers, failures


async def _run(
    url: str,
    headers: dict[str, str],
    questions: list[str],
    concurrency: int,
    rebuild: dict[str, Any],
    after_s: float,
) -> dict[str, Any]:
    import httpx

    stop = asyncio.Event()
    load = asyncio.create_task(_load(url, headers, questions, concurrency, stop))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as admin:
        await asyncio.sleep(2.0)
        started = time.perf_counter()
        r = await admin.post("/v1/collections/bench/rebuild", json=rebuild)
        r.raise_for_status()
        version = r.json()["version"]
        while True:
            data = (await admin.get("/v1/collections/bench/versions")).json()
            row = next(v for v in data["versions"] if v["version"] == version)
            if row["state"] != "building":
                break
            await asyncio.sleep(0.5)
        switched_s = time.perf_counter() - started
        await asyncio.sleep(after_s)
        stop.set()
        answers, failures = await load
        traces = {}
        for answer in answers:
            t = (await admin.get(f"/v1/responses/{answer['response_id']}")).json()
            traces[answer["response_id"]] = [c["chunk_id"] for c in t["chunks"]]
    return {
        "row": row,
        "switched_s": switched_s,
        "answers": answers,
        "failures": failures,
        "traces": traces,
    }


def bench_bluegreen(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Chat clients asking at once.")] = 4,
    corpus: Annotated[
        Path | None, typer.Option(help="A .jsonl corpus (default: SciFact's first --docs rows).")
    ] = None,
    docs: Annotated[int, typer.Option(min=1, help="How many corpus documents to ingest.")] = 300,
    embedding_model: Annotated[
        Path | None, typer.Option(help="Model directory of the new version (default: chunking changes).")
    ] = None,
    chunk_size: Annotated[int | None, typer.Option(min=16, help="Chunk size of the new version.")] = None,
    after: Annotated[float, typer.Option(min=0, help="Seconds of load after the switch.")] = 5.0,
) -> None:
    """Chat under load through a blue/green rebuild: failed requests, answers per version, mixed
    answers. Last line: JSON."""
    corpus = bench_corpus(corpus)
    if embedding_model is not None and not embedding_model.is_dir():
        raise typer.BadParameter(f"{embedding_model} is not a model directory")
    rebuild: dict[str, Any] = {}
    roots: dict[str, str] = {}
    if embedding_model is not None:
        rebuild["embedding_model"] = str(embedding_model.resolve())
        # The model stays where it is: the bench server allows that one directory as a model root.
        roots["RAGSERVER_COLLECTIONS__MODEL_ROOTS"] = json.dumps([rebuild["embedding_model"]])
    if chunk_size is not None or not rebuild:
        rebuild["chunk_size"] = chunk_size or 128
        rebuild["chunk_overlap"] = min(16, rebuild["chunk_size"] // 4)
    with tempfile.TemporaryDirectory(prefix="ragserver-bench-bluegreen-") as tmp:
        stack = stack_env(Path(tmp), **roots)
        typer.echo(f"ingesting {docs} documents ...", err=True)
        ingest_subset(stack, corpus, docs)
        with running(stack):
            typer.echo(f"chat load at concurrency {concurrency}; rebuilding with {rebuild} ...", err=True)
            result = asyncio.run(
                _run(stack.url, stack.headers, bench_questions(corpus), concurrency, rebuild, after)
            )
        # The server is down: read each version's chunk ids from its data dir.
        ids = _chunk_ids(stack.env, result["row"]["physical"])
    answers = result["answers"]
    by_version: dict[str, int] = {}
    mixed = 0
    for answer in answers:
        label = answer["collection_version"]
        by_version[label] = by_version.get(label, 0) + 1
        chunks = set(result["traces"][answer["response_id"]])
        if not chunks <= ids.get(label, set()):
            mixed += 1
    summary = {
        "documents": docs,
        "concurrency": concurrency,
        "rebuild": rebuild,
        "requests": len(answers) + len(result["failures"]),
        "failed": len(result["failures"]),
        "answers_by_version": by_version,
        "mixed_answers": mixed,
        "rebuild_s": round(result["switched_s"], 1),
        "new_version": result["row"]["label"],
        "new_version_state": result["row"]["state"],
    }
    for failure in result["failures"][:5]:
        typer.echo(f"failed: {failure}", err=True)
    typer.echo(
        f"{summary['requests']} chats, {summary['failed']} failed, {mixed} mixing versions; "
        f"by version {by_version}; rebuild + switch {summary['rebuild_s']} s"
    )
    typer.echo(json.dumps(summary))


def _chunk_ids(env: dict[str, str], new_physical: str) -> dict[str, set[str]]:
    from app.container import Container
    from app.settings import Settings

    settings = Settings(_env_file=None, data_dir=Path(env["RAGSERVER_DATA_DIR"]))  # type: ignore[call-arg]
    container = Container(settings)
    return {
        "v1": container.store.chunk_ids("bench"),
        new_physical.rsplit("--", 1)[-1]: container.store.chunk_ids(new_physical),
    }
