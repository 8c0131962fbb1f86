"""`ragserver tune retrieval`: search retrieval settings on a dev split and print the best as `.env`.

The search space is a YAML mapping of setting -> list of values (a single value is a one-item list):

    chunk_size: [256, 384]        # chunking: one ingested collection per (chunk_size, chunk_overlap,
    chunk_overlap: [32]           #   embedder), reused by every other setting and by later runs
    embedder: [null]              # embedding model path (null: the packaged model)
    fusion: [convex, rrf]
    dense_weight: [1.0, 0.7]
    bm25_weight: [1.0]
    rrf_k: [60]
    candidates: [100]
    bm25_k1: [1.2, 0.9]           # BM25 parameters re-index the collection's BM25 (not the vectors)
    bm25_b: [0.75]

Every combination is scored by hybrid nDCG@10 (with recall@100 and MRR@10) over the judged queries of
`--qrels` (a dev split: keep the test split out), cheapest first (the chunkings already ingested, then
the rest); `--budget` stops starting new combinations after that many seconds. The last line is a JSON
object with the ranked results and the best settings.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from app.cli.common import fail

CHUNKING_KEYS = ("chunk_size", "chunk_overlap", "embedder")
FUSION_KEYS = ("fusion", "dense_weight", "bm25_weight", "rrf_k", "candidates")
BM25_KEYS = ("bm25_k1", "bm25_b")
DEFAULTS: dict[str, Any] = {
    "chunk_size": None,
    "chunk_overlap": None,
    "embedder": None,
    "fusion": None,
    "dense_weight": None,
    "bm25_weight": None,
    "rrf_k": None,
    "candidates": None,
    "bm25_k1": None,
    "bm25_b": None,
}
ENV = {
    "chunk_size": "RAGSERVER_CHUNKING__CHUNK_SIZE",
    "chunk_overlap": "RAGSERVER_CHUNKING__CHUNK_OVERLAP",
    "embedder": "RAGSERVER_EMBEDDING_MODEL_PATH",
    "fusion": "RAGSERVER_RETRIEVAL__FUSION",
    "dense_weight": "RAGSERVER_RETRIEVAL__DENSE_WEIGHT",
    "bm25_weight": "RAGSERVER_RETRIEVAL__BM25_WEIGHT",
    "rrf_k": "RAGSERVER_RETRIEVAL__RRF_K",
    "candidates": "RAGSERVER_RETRIEVAL__CANDIDATES",
    "bm25_k1": "RAGSERVER_RETRIEVAL__BM25_K1",
    "bm25_b": "RAGSERVER_RETRIEVAL__BM25_B",
}


def load_space(path: Path) -> list[dict[str, Any]]:
    """Every combination of the space file's values; ValueError for an unknown key or an empty list."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of setting -> list of values")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    values = {k: (v if isinstance(v, list) else [v]) for k, v in raw.items()}
    empty = [k for k, v in values.items() if not v]
    if empty:
        raise ValueError(f"{path}: no values for {', '.join(empty)}")
    keys = list(values)
    return [
        {**DEFAULTS, **dict(zip(keys, combo, strict=True))} for combo in itertools.product(*values.values())
    ]


def _settings(base: Any, combo: dict[str, Any]) -> Any:
    chunking = base.chunking.model_copy(
        update={k: combo[k] for k in ("chunk_size", "chunk_overlap") if combo[k] is not None}
    )
    embedding = base.embedding.model_copy(
        update={"model_path": combo["embedder"]} if combo["embedder"] else {}
    )
    retrieval = base.retrieval.model_copy(
        update={
            **({"bm25_k1": float(combo["bm25_k1"])} if combo["bm25_k1"] is not None else {}),
            **({"bm25_b": float(combo["bm25_b"])} if combo["bm25_b"] is not None else {}),
        }
    )
    return base.model_copy(update={"chunking": chunking, "embedding": embedding, "retrieval": retrieval})


def _collection(corpus: Path, combo: dict[str, Any], settings: Any) -> str:
    key = json.dumps(
        [settings.chunking.chunk_size, settings.chunking.chunk_overlap, combo["embedder"] or ""],
        sort_keys=True,
    )
    return f"tune-{corpus.stem[:20].lower()}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def tune_retrieval(
    space: Annotated[Path, typer.Option(help="YAML search space: setting -> list of values.")],
    corpus: Annotated[Path, typer.Option(help="BEIR corpus.jsonl.")],
    queries: Annotated[Path, typer.Option(help="BEIR queries.jsonl (every split's texts).")],
    qrels: Annotated[Path, typer.Option(help="The dev split's judgements (.tsv): only its queries are run.")],
    budget: Annotated[
        float | None, typer.Option(min=1, help="Seconds: no new combination starts after this.")
    ] = None,
    limit_queries: Annotated[int | None, typer.Option(min=1, help="Only the first N judged queries.")] = None,
) -> None:
    """Evaluate every combination of a search space by hybrid nDCG@10 on a dev split, reusing ingested
    collections where chunking and embedder are unchanged; print a ranked table and the best settings as
    an `.env` snippet. The last line is a JSON object."""
    from app.container import Container
    from app.evaluation.corpus import ensure_corpus_collection
    from app.evaluation.retrieval_run import evaluate_mode
    from app.retrieval.retriever import FUSION_METHODS, RetrievalError
    from app.settings import Settings
    from evals.retrieval_eval import judged_queries, load_qrels, load_queries

    missing = [str(p) for p in (space, corpus, queries, qrels) if not p.is_file()]
    if missing:
        fail(f"no such file: {', '.join(missing)}")
    try:
        combos = load_space(space)
    except ValueError as exc:
        fail(str(exc))
    bad = sorted(
        {str(c["fusion"]) for c in combos if c["fusion"] is not None and c["fusion"] not in FUSION_METHODS}
    )
    if bad:
        fail(f"unknown fusion {', '.join(bad)}; use {', '.join(FUSION_METHODS)}")
    judged = load_qrels(qrels)
    picked = judged_queries(load_queries(queries), judged, limit_queries)
    if not picked:
        fail("no query in the queries file has a judgement in the qrels file")
    base = Settings()
    started = time.monotonic()
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for combo in combos:
        groups.setdefault(tuple(combo[k] for k in (*CHUNKING_KEYS, *BM25_KEYS)), []).append(combo)
    containers: dict[tuple[Any, ...], Container] = {}
    results: list[dict[str, Any]] = []
    skipped = 0
    try:
        for group_key, members in groups.items():
            for combo in members:
                if budget is not None and time.monotonic() - started > budget:
                    skipped += 1
                    continue
                settings = _settings(base, combo)
                container = containers.get(group_key)
                if container is None:
                    container = containers[group_key] = Container(settings)
                    # One store for every container (one Chroma client per path); models once per embedder.
                    first = next((c for c in containers.values() if c is not container), None)
                    if first is not None:
                        container.__dict__["store"] = first.store
                    same = next(
                        (c for k, c in containers.items() if k[2] == group_key[2] and c is not container),
                        None,
                    )
                    if same is not None:
                        container.__dict__["embedder"] = same.embedder
                        container.__dict__["query_embedder"] = same.query_embedder
                name = _collection(corpus, combo, settings)
                ensure_corpus_collection(container, corpus, name)
                serving = container.versions.serving(name)
                retriever = serving.retriever.with_fusion(
                    **{
                        field: (combo[key] if field != "method" else combo["fusion"])
                        for field, key in (
                            ("method", "fusion"),
                            ("dense_weight", "dense_weight"),
                            ("bm25_weight", "bm25_weight"),
                            ("rrf_k", "rrf_k"),
                            ("candidates", "candidates"),
                        )
                        if combo[key] is not None
                    }
                )
                try:
                    result = evaluate_mode(
                        retriever, serving.physical, "hybrid", picked, judged, top_k=100, rerank=False
                    )
                except RetrievalError as exc:
                    fail(str(exc))
                f = retriever.fusion
                effective = {
                    "chunk_size": settings.chunking.chunk_size,
                    "chunk_overlap": settings.chunking.chunk_overlap,
                    "embedder": combo["embedder"],
                    "fusion": f.method,
                    "dense_weight": f.dense_weight,
                    "bm25_weight": f.bm25_weight,
                    "rrf_k": f.rrf_k,
                    "candidates": f.candidates,
                    "bm25_k1": settings.retrieval.bm25_k1,
                    "bm25_b": settings.retrieval.bm25_b,
                }
                results.append({"settings": effective, **result.summary()})
                typer.echo(
                    f"nDCG@10 {result.metrics['ndcg@10']:.4f}  "
                    + "  ".join(f"{k}={v}" for k, v in effective.items() if v is not None),
                    err=True,
                )
    finally:
        for container in containers.values():
            if container.built("retrieval"):
                container.retrieval.close()
    if not results:
        fail("the budget ran out before the first combination")
    results.sort(key=lambda r: -r["ndcg@10"])
    typer.echo(
        f"\n{len(results)} of {len(combos)} combinations on {len(picked)} judged queries"
        + (f" ({skipped} skipped: budget)" if skipped else "")
    )
    typer.echo(f"{'rank':>4}  {'nDCG@10':>8}  {'R@100':>6}  {'MRR@10':>6}  settings")
    for rank, r in enumerate(results, start=1):
        shown = " ".join(f"{k}={v}" for k, v in r["settings"].items() if v is not None)
        typer.echo(f"{rank:>4}  {r['ndcg@10']:>8.4f}  {r['recall@100']:>6.4f}  {r['mrr@10']:>6.4f}  {shown}")
    best = results[0]["settings"]
    typer.echo("\n# best settings (.env)")
    for key, value in best.items():
        if value is not None:
            typer.echo(f"{ENV[key]}={value}")
    sys.stdout.flush()
    typer.echo(
        json.dumps(
            {
                "evaluated": len(results),
                "skipped": skipped,
                "queries": len(picked),
                "best": best,
                "results": results,
            }
        )
    )
