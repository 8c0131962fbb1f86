"""`ragserver bench profile`: where a chat request spends the server's event-loop time.

Starts the instant scripted LLM and the real server (`app.bench.profiled_server`: `ragserver serve` with a
cProfile switch), each in its own process as `bench serve` does, ingests a small corpus, warms up, then
profiles `--requests` non-streamed `/v1/chat` requests and as many streamed ones, one at a time. Prints,
per kind, the client's p50 (the whole answer; the first token for streams) and the top entries by
cumulative time per request; the `.prof` files are kept with `--out` (for `python -m pstats`).

cProfile sees the event-loop thread only: retrieval and the query embedding run on worker threads (their
costs are in `bench queries` and `eval retrieval`), and a coroutine's calls count each time it resumes.
"""

from __future__ import annotations

import json
import pstats
import re
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from app.bench.profiled_server import PREFIX
from app.bench.stack import REPO, Stack, bench_corpus, bench_questions, ingest_subset, running, stack_env
from evals.stats import percentile

WARMUP = 40
# Frames that only pass a request along (the ASGI stack, the event loop): they top every cumulative list.
_PLUMBING = re.compile(
    r"uvicorn/|starlette/(middleware|routing|applications|_exception_handler)|fastapi/(applications|routing"
    r"|middleware|_body_limit|telemetry)|app/api/middleware|profiled_server|asyncio/(events|base_events)|"
    r"anyio/_core/_tasks|_run_coro|cancel_on_finish"
)


def _ask(client: object, body: dict[str, object]) -> float:
    """Milliseconds to the answer (non-streamed) or to its first token (streamed)."""
    import httpx

    assert isinstance(client, httpx.Client)
    started = time.perf_counter()
    if not body["stream"]:
        client.post("/v1/chat", json=body).raise_for_status()
        return (time.perf_counter() - started) * 1000
    first: float | None = None
    with client.stream("POST", "/v1/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("event: token"):
                first = time.perf_counter()
    if first is None:
        raise RuntimeError("a streamed answer without a token")
    return (first - started) * 1000


def _profile(stack: Stack, questions: list[str], requests: int) -> dict[str, float | None]:
    import httpx

    p50: dict[str, float | None] = {}
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=60) as client:
        for i in range(WARMUP):
            _ask(client, {"message": questions[-1 - i], "collection": "bench", "stream": i % 2 == 0})
        for kind, stream in (("chat", False), ("chat_stream", True)):
            client.post(PREFIX + "start").raise_for_status()
            offset = 0 if stream else requests  # no question twice
            times = [
                _ask(client, {"message": q, "collection": "bench", "stream": stream})
                for q in questions[offset : offset + requests]
            ]
            client.post(PREFIX + "stop", params={"name": kind}).raise_for_status()
            p50[kind] = percentile(times, 50, digits=2)
    return p50


def top_entries(path: Path, requests: int, top: int, plumbing: bool = False) -> list[str]:
    """The `top` functions of a profile by cumulative time, per request: cumulative ms, own ms, calls
    (coroutine resumptions count as calls) and the function."""
    rows = []
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    for (file, line, name), (_, calls, own, cumulative, _) in stats.items():
        where = re.sub(r".*/site-packages/|.*/lib/python3\.\d+/|" + re.escape(str(REPO)) + "/", "", file)
        label = f"{where}:{line}({name})"
        if plumbing or not _PLUMBING.search(label):
            rows.append((cumulative, own, calls, label))
    rows.sort(reverse=True)
    lines = [f"{'cum ms':>8} {'own ms':>8} {'calls':>7}  function (per request)"]
    for cumulative, own, calls, label in rows[:top]:
        per = (cumulative * 1000 / requests, own * 1000 / requests, calls / requests)
        lines.append(f"{per[0]:8.3f} {per[1]:8.3f} {per[2]:7.1f}  {label}")
    return lines


def bench_profile(
    requests: Annotated[
        int, typer.Option(min=1, help="Requests of each kind (non-streamed, streamed).")
    ] = 300,
    docs: Annotated[int, typer.Option(min=1, help="How many corpus documents to ingest.")] = 500,
    corpus: Annotated[
        Path | None, typer.Option(help="A .jsonl corpus (default: SciFact's first --docs rows).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Entries to print per profile.")] = 25,
    plumbing: Annotated[
        bool, typer.Option(help="Also list the frames that only pass a request along (ASGI stack, loop).")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Keep the .prof files in this folder.")] = None,
) -> None:
    """cProfile of the server's event loop over non-streamed and streamed /v1/chat requests against an
    instant scripted LLM. Last line: JSON (client p50 ms per kind)."""
    corpus = bench_corpus(corpus)
    questions = bench_questions(corpus)
    if len(questions) < 2 * requests + WARMUP:
        questions = (questions * (2 * requests + WARMUP))[: 2 * requests + WARMUP]
    with tempfile.TemporaryDirectory(prefix="ragserver-bench-profile-") as tmp:
        folder = out or Path(tmp) / "profiles"
        stack = stack_env(Path(tmp))
        typer.echo(f"ingesting {docs} documents ...", err=True)
        ingest_subset(stack, corpus, docs)
        with running(stack, profile_to=folder):
            typer.echo(f"profiling {requests} non-streamed and {requests} streamed requests ...", err=True)
            p50 = _profile(stack, questions, requests)
        for kind, label in (
            ("chat", "non-streamed, p50 to the answer"),
            ("chat_stream", "streamed, p50 to the first token"),
        ):
            typer.echo(f"\n/v1/chat {label}: {p50[kind]} ms")
            typer.echo("\n".join(top_entries(folder / f"{kind}.prof", requests, top, plumbing)))
    typer.echo(json.dumps({"requests": requests, **{f"{k}_p50_ms": v for k, v in p50.items()}}))
