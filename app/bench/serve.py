"""`ragserver bench serve`: time to first token through the real server versus the LLM's own.

Starts an instant scripted OpenAI-compatible LLM and the real server, each in its own process on
loopback, ingests a small corpus, then fires streaming `/v1/chat` requests at a fixed concurrency.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from app.bench.stack import Stack, bench_corpus, bench_questions, ingest_subset, running, stack_env
from evals.stats import percentile


def _is_token(line: str, chat: bool) -> bool:
    """Whether an SSE line carries answer text (ragserver's `token` event, or an OpenAI delta)."""
    if chat:
        return line.startswith("event: token")
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[len("data: ") :]).get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def _fire(
    url: str,
    concurrency: int,
    requests: int,
    chat: bool,
    questions: list[str],
    headers: dict[str, str] | None = None,
    mode: str = "hybrid",
    abstained: list[bool] | None = None,
    enrolled: list[bool] | None = None,
) -> tuple[list[float], int]:
    """Streaming requests; returns the times to first token (ms) and the error count. `abstained`, when
    given, gets for each timed request whether its answer abstained (ragserver's `done` event).
    `enrolled`, when given: every other request names its retrieval mode (the settings' own, so the same
    work), which keeps it out of a running experiment; the list gets, for each timed request, whether it
    was enrolled (its `X-RAGServer-Arm` header)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ttfts: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        question = questions[i % len(questions)]
        if chat:
            path, body = "/v1/chat", {"message": question, "collection": "bench", "stream": True}
            if enrolled is not None and i % 2:
                body["mode"] = mode
        else:
            path = "/v1/chat/completions"
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": question}]}
        started = time.perf_counter()
        first: float | None = None
        withdrawn = False
        arm = False
        try:
            async with client.stream("POST", url + path, json=body, timeout=60) as response:
                if response.status_code != 200:
                    errors += 1
                    return
                arm = "x-ragserver-arm" in response.headers
                async for line in response.aiter_lines():
                    if first is None and _is_token(line, chat):
                        first = time.perf_counter()
                    elif line.startswith("data: {") and '"abstained":true' in line.replace(" ", ""):
                        withdrawn = True
            if first is None:
                errors += 1
            else:
                ttfts.append((first - started) * 1000)
                if abstained is not None:
                    abstained.append(withdrawn)
                if enrolled is not None:
                    enrolled.append(arm)
        except httpx.HTTPError:
            errors += 1

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            await one(client, i)

    async with httpx.AsyncClient(limits=limits, headers=headers) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return ttfts, errors


def bench_serve(
    concurrency: Annotated[int, typer.Option(min=1, max=512, help="Requests in flight at once.")] = 64,
    requests: Annotated[int, typer.Option(min=1, help="Total streaming chat requests.")] = 2000,
    corpus: Annotated[
        Path | None, typer.Option(help="A .jsonl corpus to ingest (default: SciFact's first --docs rows).")
    ] = None,
    docs: Annotated[int, typer.Option(min=1, help="How many corpus documents to ingest.")] = 500,
    mode: Annotated[
        str | None, typer.Option(help="Retrieval mode for the server (default from settings).")
    ] = None,
    routes: Annotated[
        str | None,
        typer.Option(
            help="A routing chain on the bench collection that answers every question without retrieval or "
            "the LLM: `rule` (one rule matching everything) or `curated` (each question approved as a "
            "curated answer first)."
        ),
    ] = None,
    experiment: Annotated[
        bool,
        typer.Option(
            help="Run a 50/50 experiment on the bench collection (arms that change nothing) and send every "
            "other request with its mode named (not enrolled): the TTFT of both, from the same run."
        ),
    ] = False,
) -> None:
    """Streaming /v1/chat TTFT and throughput against an instant scripted LLM. Last line: JSON."""
    corpus = bench_corpus(corpus)
    with tempfile.TemporaryDirectory(prefix="ragserver-bench-serve-") as tmp:
        stack = stack_env(Path(tmp), **({"RAGSERVER_RETRIEVAL_MODE": mode} if mode else {}))
        typer.echo(f"ingesting {docs} documents ...", err=True)
        ingest_subset(stack, corpus, docs)
        with running(stack):
            if experiment:
                _start_experiment(stack)
            if routes is not None:
                _set_routes(stack, routes, bench_questions(corpus)[:requests])
            warm = min(requests, max(20, concurrency))
            questions = bench_questions(corpus)
            asyncio.run(
                _fire(
                    stack.url, concurrency, warm, chat=True, questions=questions[::-1], headers=stack.headers
                )
            )
            typer.echo(f"firing {requests} requests at concurrency {concurrency} ...", err=True)
            started = time.perf_counter()
            abstained: list[bool] = []
            enrolled: list[bool] | None = [] if experiment else None
            ttfts, errors = asyncio.run(
                _fire(
                    stack.url,
                    concurrency,
                    requests,
                    chat=True,
                    questions=questions,
                    headers=stack.headers,
                    abstained=abstained,
                    enrolled=enrolled,
                    mode=mode or "hybrid",
                )
            )
            elapsed = time.perf_counter() - started
            llm_ttfts, _ = asyncio.run(
                _fire(stack.llm_url, concurrency, min(requests, 500), chat=False, questions=questions)
            )
    result = {
        "requests": requests,
        "concurrency": concurrency,
        "errors": errors,
        "rps": round(requests / elapsed, 2),
        "ttft_p50_ms": percentile(ttfts, 50, digits=2),
        "ttft_p95_ms": percentile(ttfts, 95, digits=2),
        "ttft_p99_ms": percentile(ttfts, 99, digits=2),
        "llm_ttft_p50_ms": percentile(llm_ttfts, 50, digits=2),
        # Answers that abstained before generation never waited for the LLM: their TTFT is another path.
        "abstained": sum(abstained),
        "ttft_answered_p50_ms": percentile(
            [t for t, a in zip(ttfts, abstained, strict=True) if not a], 50, digits=2
        ),
    }
    if enrolled is not None:
        answered = [(t, e) for t, e, a in zip(ttfts, enrolled, abstained, strict=True) if not a]
        result["enrolled"] = sum(enrolled)
        result["ttft_enrolled_p50_ms"] = percentile([t for t, e in answered if e], 50, digits=2)
        result["ttft_not_enrolled_p50_ms"] = percentile([t for t, e in answered if not e], 50, digits=2)
    typer.echo(json.dumps(result))


def _set_routes(stack: Stack, kind: str, questions: list[str]) -> None:
    """A routing chain on the bench collection that answers every question: one rule, or a curated
    answer per question (added and approved through the admin API)."""
    import httpx

    if kind not in ("rule", "curated"):
        raise typer.BadParameter("--routes is rule or curated")
    base = "/v1/admin/collections/bench"
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=60) as client:
        if kind == "rule":
            stage = {"type": "rule", "id": "everything", "pattern": ".", "answer": "Answered by a rule."}
        else:
            typer.echo(f"approving {len(questions)} curated answers ...", err=True)
            for question in questions:
                made = client.post(f"{base}/curated", json={"question": question, "answer": "Curated."})
                made.raise_for_status()
                client.post(f"{base}/curated/{made.json()['id']}/approve").raise_for_status()
            stage = {"type": "curated", "threshold": "auto"}
        client.put(f"{base}/routes", json={"stages": [stage]}).raise_for_status()


def _start_experiment(stack: Stack) -> None:
    """A running 50/50 experiment on the bench collection whose arms change nothing."""
    import httpx

    spec = {
        "name": "bench",
        "collections": ["bench"],
        "arms": [{"name": "control", "weight": 50}, {"name": "same", "weight": 50}],
    }
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=60) as client:
        client.post("/v1/admin/experiments", json=spec, params={"replace": "true"}).raise_for_status()
        client.post("/v1/admin/experiments/bench/start").raise_for_status()
