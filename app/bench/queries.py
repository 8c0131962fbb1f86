"""`ragserver bench queries`: one query's embedding time, torch against the ONNX Runtime export."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated, cast

import numpy as np
import typer

from app.cli.common import fail


def _p50_ms(embed, texts: list[str]) -> float:  # type: ignore[no-untyped-def]
    for text in texts[:20]:  # warm-up
        embed([text])
    times = []
    for text in texts:
        started = time.perf_counter()
        embed([text])
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def bench_queries(
    queries: Annotated[
        Path, typer.Option(help="A .jsonl of queries ({_id, text} rows, BEIR layout).", exists=True)
    ],
    limit: Annotated[int, typer.Option(min=1, help="How many queries to time.")] = 300,
    threads: Annotated[str, typer.Option(help="Comma-separated intra-op thread counts to try.")] = "1,2",
) -> None:
    """Time embedding one query at a time with SentenceTransformer.encode (torch) and with the ONNX
    export the server uses for queries, at each thread count, and compare their vectors. The last line
    is a JSON object."""
    import torch

    from app.container import open_container_sync
    from app.settings import Settings
    from evals.retrieval_eval import load_queries
    from ingest.embedder import SentenceTransformerEmbedder
    from ingest.onnx_encoder import load_onnx_encoder

    try:
        counts = [int(t) for t in threads.split(",")]
    except ValueError:
        fail(f"--threads must be comma-separated integers, not {threads!r}")
    try:
        texts = list(load_queries(queries).values())[:limit]
    except ValueError as exc:  # a row without _id/text, or not JSON
        fail(str(exc))
    if not texts:
        fail(f"{queries} holds no queries")
    with open_container_sync(Settings()) as container:
        if container.settings.embedding.provider != "local":
            fail("bench queries needs the local embedding provider")
        embedder = cast(SentenceTransformerEmbedder, container.embedder)
        result: dict[str, object] = {"queries": len(texts)}
        for count in counts:
            torch.set_num_threads(max(count, 1))
            result[f"torch_p50_ms_{count}t"] = _p50_ms(embedder.embed, texts)
            onnx = load_onnx_encoder(embedder, container.settings.models_dir, threads=count)
            result[f"onnx_p50_ms_{count}t"] = _p50_ms(onnx.embed, texts)
        diff = np.abs(onnx.embed(texts) - embedder.embed(texts))
        result["max_abs_diff"] = float(f"{diff.max():.3g}")
    typer.echo(json.dumps(result))
