"""`ragserver bench scale`: how cost grows with corpus size (docs/BENCHMARKS.md, "Scale").

Synthetic chunks: real texts (a BEIR corpus, SciFact by default) recycled under new ids, with random
unit vectors instead of embeddings, so the embedder is not what is measured. Each size runs in a fresh
process on a fresh data dir (embedded Chroma + the BM25 index), and prints:

- write throughput: chunks/s through `upsert_chunks` plus the BM25 term table, then one BM25 flush;
- peak RSS of that process;
- replica start-up: a new process on the same data dir until its first hybrid answer, with the BM25
  snapshot there (a restart) and without it (a new replica re-deriving BM25 from the store);
- hybrid retrieval latency p50/p99 at concurrency 1 and 16 (real query texts, the ONNX query encoder).

The last line is a JSON object with one entry per size.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from app.cli.common import fail
from evals.stats import percentile

COLLECTION = "scale"
BATCH = 5000
DIM = 384


def _texts(corpus: Path, limit: int = 20000) -> list[str]:
    texts = []
    with corpus.open(encoding="utf-8") as fh:
        for line in islice(fh, limit):
            row = json.loads(line)
            texts.append(f"{row.get('title', '')}\n{row.get('text', '')}".strip())
    return texts


def _queries(path: Path, limit: int) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in islice(fh, limit)]


def _latency(retrieve: Any, queries: list[str], concurrency: int) -> dict[str, float | None]:
    def one(query: str) -> float:
        started = time.perf_counter()
        retrieve(query)
        return (time.perf_counter() - started) * 1000

    for query in queries[:10]:  # warm-up
        one(query)
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        times = list(pool.map(one, queries))
        wall = time.perf_counter() - started
    return {
        "p50_ms": percentile(times, 50, digits=1),
        "p99_ms": percentile(times, 99, digits=1),
        "qps": round(len(queries) / wall, 1),
    }


def _settings(data_dir: Path) -> Any:
    from app.settings import Settings

    return Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]


def _fill(data_dir: Path, size: int, corpus: Path) -> dict[str, Any]:
    """Write `size` synthetic chunks; the write figures."""
    from app.container import Container
    from ingest.types import Chunk

    container = Container(_settings(data_dir))
    store, bm25 = container.store, container.bm25
    store.ensure_collection(COLLECTION)
    texts = cycle(_texts(corpus))
    rng = np.random.default_rng(0)
    store_s = bm25_s = 0.0
    started = time.perf_counter()
    for start in range(0, size, BATCH):
        n = min(BATCH, size - start)
        chunks = []
        for i in range(start, start + n):
            doc = f"syn{i:08d}"
            meta = {"doc_id": doc, "source": f"{doc}.txt", "title": doc, "version": "1", "chunk_index": 0}
            chunks.append(Chunk(f"{doc}::1::0", doc, next(texts), meta))
        vectors = rng.standard_normal((n, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        t0 = time.perf_counter()
        store.upsert_chunks(COLLECTION, chunks, vectors)
        t1 = time.perf_counter()
        bm25.apply(COLLECTION, chunks, [])
        bm25_s += time.perf_counter() - t1
        store_s += t1 - t0
    t0 = time.perf_counter()
    bm25.flush(COLLECTION)
    flush_s = time.perf_counter() - t0
    total = time.perf_counter() - started
    return {
        "write_chunks_per_s": round(size / total, 1),
        "write_s": round(total, 1),
        "store_s": round(store_s, 1),
        "bm25_terms_s": round(bm25_s, 1),
        "bm25_index_s": round(flush_s, 1),
    }


def _first_answer(data_dir: Path) -> float:
    """Seconds from a new process's container to its first hybrid answer (in this process: the caller
    runs it in a fresh one)."""
    from app.container import Container

    started = time.perf_counter()
    container = Container(_settings(data_dir))
    container.retriever.retrieve(COLLECTION, "protein folding in yeast cells", top_k=5, mode="hybrid")
    return time.perf_counter() - started


def _child(args: list[str]) -> None:
    """One size in this (fresh) process: `fill|start DATA_DIR [SIZE CORPUS QUERIES REQUESTS]`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    what, data_dir = args[0], Path(args[1])
    if what == "start":
        print(json.dumps({"start_s": round(_first_answer(data_dir), 2)}))
        return
    size, corpus, queries, requests = int(args[2]), Path(args[3]), Path(args[4]), int(args[5])
    result: dict[str, Any] = {"chunks": size, **_fill(data_dir, size, corpus)}
    from app.container import Container

    container = Container(_settings(data_dir))
    asked = _queries(queries, requests)

    def retrieve(query: str) -> None:
        container.retriever.retrieve(COLLECTION, query, top_k=5, mode="hybrid")

    result["hybrid_c1"] = _latency(retrieve, asked, 1)
    result["hybrid_c16"] = _latency(retrieve, asked, 16)
    # ru_maxrss is KiB on Linux.
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def _run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "app.bench.scale", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        fail(f"bench scale child {args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_scale(
    corpus: Annotated[Path, typer.Option(help="BEIR corpus.jsonl whose texts are recycled.", exists=True)],
    queries: Annotated[Path, typer.Option(help="BEIR queries.jsonl for the latency runs.", exists=True)],
    sizes: Annotated[str, typer.Option(help="Comma-separated chunk counts.")] = "10000,100000,1000000",
    requests: Annotated[int, typer.Option(min=20, help="Queries per latency run.")] = 300,
    work_dir: Annotated[
        Path | None, typer.Option(help="Where the data dirs go (default: a temporary folder, removed).")
    ] = None,
) -> None:
    """Write throughput, peak RSS, replica start-up and hybrid retrieval p50/p99 (concurrency 1 and 16)
    at each corpus size, from synthetic chunks (real texts, random unit vectors). Each size runs in
    fresh processes. The last line is a JSON object."""
    try:
        counts = [int(s) for s in sizes.split(",")]
    except ValueError:
        fail(f"--sizes must be comma-separated integers, not {sizes!r}")
    root = work_dir or Path(tempfile.mkdtemp(prefix="ragserver-scale-"))
    results = []
    try:
        for size in counts:
            data_dir = root / f"size-{size}"
            shutil.rmtree(data_dir, ignore_errors=True)
            row = _run_child("fill", str(data_dir), str(size), str(corpus), str(queries), str(requests))
            row["restart_s"] = _run_child("start", str(data_dir))["start_s"]
            # A new replica: the same store, no BM25 snapshot of its own (re-derived from the store).
            shutil.rmtree(data_dir / "bm25")
            row["new_replica_s"] = _run_child("start", str(data_dir))["start_s"]
            results.append(row)
            c1, c16 = row["hybrid_c1"], row["hybrid_c16"]
            typer.echo(
                f"{size:>9} chunks: write {row['write_chunks_per_s']:>8.0f}/s ({row['write_s']} s: store "
                f"{row['store_s']}, BM25 terms {row['bm25_terms_s']}, index {row['bm25_index_s']}), peak RSS "
                f"{row['peak_rss_mb']:.0f} MB, restart {row['restart_s']} s, "
                f"new replica {row['new_replica_s']} s, "
                f"hybrid p50/p99 c1 {c1['p50_ms']}/{c1['p99_ms']} ms, c16 {c16['p50_ms']}/{c16['p99_ms']} ms "
                f"({c16['qps']} q/s)",
                err=True,
            )
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    typer.echo(json.dumps({"sizes": results}))


if __name__ == "__main__":
    _child(sys.argv[1:])
