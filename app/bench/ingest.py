"""`ragserver bench ingest`: pipeline throughput against raw SentenceTransformer.encode."""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer


def _peak_rss_mb() -> float:
    import resource

    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_ingest(
    corpus: Annotated[Path, typer.Option(help="A .jsonl corpus ({_id, title, text} rows).", exists=True)],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N documents.")] = None,
    backend: Annotated[
        str,
        typer.Option(help="torch | onnx: how the pipeline embeds documents (embedding.document_backend)."),
    ] = "torch",
) -> None:
    """Measure (a) raw torch encode throughput over the pipeline's chunk texts and (b) end-to-end ingest
    of the same input into a fresh store through `--backend`. The last line is a JSON object with both
    and their ratio (`efficiency`); with onnx also `max_abs_diff`, the largest difference of a vector
    element between the ONNX and torch embeddings of the same texts."""
    from app.cli.common import fail

    if backend not in ("torch", "onnx"):
        fail(f"--backend must be torch or onnx, not {backend!r}")
    from app.container import open_container_sync
    from app.settings import Settings
    from ingest.loaders import iter_jsonl_corpus

    def documents():  # type: ignore[no-untyped-def]
        return itertools.islice(iter_jsonl_corpus(corpus), limit)

    with tempfile.TemporaryDirectory(prefix="ragserver-bench-") as tmp:
        base = Settings()
        settings = base.model_copy(
            update={
                "data_dir": Path(tmp),
                "chroma": base.chroma.model_copy(update={"url": None}),
                "embedding": base.embedding.model_copy(
                    update={"document_backend": backend, "onnx_cache_dir": str(base.models_dir.resolve())}
                ),
            }
        )
        with open_container_sync(settings) as container:
            result = _measure(container, documents)
    result["backend"] = backend
    typer.echo(f"raw {result.pop('raw_s'):.1f}s, ingest {result.pop('ingest_s'):.1f}s ({backend})")
    typer.echo(json.dumps(result))


def _measure(container: Any, documents: Callable[[], Iterator[Any]]) -> dict[str, Any]:
    from ingest.chunking import document_version, embedding_text

    embedder = container.embedder
    chunker = container.chunker
    pipeline = container.pipeline

    # The exact texts the pipeline embeds.
    texts = [
        embedding_text(chunk)
        for doc in documents()
        for chunk in chunker.chunk(
            doc, version=document_version(doc.content_hash, pipeline.signature), ingested_at=0
        )
    ]
    docs = sum(1 for _ in documents())
    model = embedder.model  # type: ignore[attr-defined]
    model.encode(texts[:64])  # warm-up, same for both measurements
    typer.echo(f"raw encode of {len(texts)} chunks ...", err=True)
    started = time.perf_counter()
    reference = model.encode(texts, normalize_embeddings=True)  # fp32, default settings
    raw_s = time.perf_counter() - started
    extra: dict[str, Any] = {}
    if pipeline.embedder is not embedder:  # ONNX: the same texts, compared element by element
        import numpy as np

        extra["max_abs_diff"] = float(np.abs(pipeline.embedder.embed(texts) - reference).max())

    pipeline.embedder.embed(texts[:64])
    typer.echo(f"ingest of {docs} documents ...", err=True)
    report = pipeline.ingest(documents(), "bench")
    ingest_s = report.seconds
    if report.chunks_written != len(texts):
        raise RuntimeError(f"pipeline wrote {report.chunks_written} chunks, expected {len(texts)}")

    raw = len(texts) / raw_s
    ingest_rate = len(texts) / ingest_s
    return {
        "docs": docs,
        "chunks": len(texts),
        "raw_chunks_per_s": round(raw, 2),
        "ingest_chunks_per_s": round(ingest_rate, 2),
        "efficiency": round(ingest_rate / raw, 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        **extra,
        "raw_s": raw_s,
        "ingest_s": ingest_s,
    }
