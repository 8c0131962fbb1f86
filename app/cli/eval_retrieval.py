"""`ragserver eval retrieval`: nDCG@10, recall@100, MRR@10 and latency per retrieval mode on a BEIR set."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import fail, parse_json_option


def retrieval(
    corpus: Annotated[Path, typer.Option(help="BEIR corpus.jsonl ({_id, title, text} rows).")],
    queries: Annotated[Path, typer.Option(help="BEIR queries.jsonl ({_id, text} rows).")],
    qrels: Annotated[
        Path, typer.Option(help="Judgements .tsv: query-id, corpus-id, score (header optional).")
    ],
    mode: Annotated[
        list[str] | None,
        typer.Option("--mode", "-m", help="dense | bm25 | hybrid; repeat for several (default: all)."),
    ] = None,
    limit_queries: Annotated[int | None, typer.Option(min=1, help="Only the first N judged queries.")] = None,
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Collection to use (default: eval-<dataset name>)."),
    ] = None,
    top_k: Annotated[int, typer.Option(min=10, max=1000, help="Documents retrieved per query.")] = 100,
    rerank: Annotated[bool, typer.Option(help="Rerank with the configured cross-encoder.")] = False,
    fusion: Annotated[
        str | None, typer.Option(help="Hybrid fusion: rrf | convex (default from settings).")
    ] = None,
    filters: Annotated[
        str | None, typer.Option("--filter", help="JSON filters applied to every query.")
    ] = None,
) -> None:
    """Ingest the corpus into its own collection (reused when unchanged), run every judged query per mode,
    and print nDCG@10, recall@100, MRR@10 and latency p50/p99; the last line is a JSON object per mode."""
    from tqdm import tqdm

    from app.cli.common import container_for
    from app.evaluation.corpus import ensure_corpus_collection, eval_collection_name
    from app.evaluation.retrieval_run import evaluate_mode
    from app.retrieval.retriever import FUSION_METHODS, MODES, RetrievalError
    from app.services.limits import check_filters
    from app.settings import Settings
    from evals.retrieval_eval import format_result, judged_queries, load_qrels, load_queries
    from ingest.filters import FilterError

    missing = [str(p) for p in (corpus, queries, qrels) if not p.is_file()]
    if missing:
        fail(f"no such file: {', '.join(missing)}")
    modes = list(dict.fromkeys(mode or MODES))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        fail(f"unknown mode(s) {', '.join(unknown)}; use {', '.join(MODES)}")
    if fusion is not None and fusion not in FUSION_METHODS:
        fail(f"unknown fusion {fusion!r}; use {', '.join(FUSION_METHODS)}")
    try:
        flt = check_filters(parse_json_option(filters, "--filter"), Settings().limits)
    except FilterError as exc:
        fail(str(exc))
    with container_for(collection or eval_collection_name(corpus)) as (container, name):
        bar = tqdm(desc=f"ingest {name}", unit="doc", file=sys.stderr, disable=None)
        ingest = ensure_corpus_collection(container, corpus, name, on_document=lambda *_: bar.update(1))
        bar.close()
        typer.echo(json.dumps(ingest), err=True)

        judged = load_qrels(qrels)
        picked = judged_queries(load_queries(queries), judged, limit_queries)
        if not picked:
            fail("no query in the queries file has a judgement in the qrels file")
        serving = container.versions.serving(name)
        retriever = serving.retriever
        if fusion:
            retriever = retriever.with_fusion(method=fusion)
        summary: dict[str, dict[str, float]] = {}
        f = retriever.fusion
        typer.echo(
            f"{len(picked)} judged queries, collection {name}, top {top_k} documents per query; "
            f"hybrid fusion {f.method} (dense {f.dense_weight}, bm25 {f.bm25_weight}"
            + (f", k {f.rrf_k:g})" if f.method == "rrf" else ")")
        )
        for m in modes:
            try:
                result = evaluate_mode(
                    retriever,
                    serving.physical,
                    m,
                    picked,
                    judged,
                    top_k=top_k,
                    rerank=rerank,
                    filters=flt,
                    progress=partial(tqdm, desc=m, unit="q", file=sys.stderr, disable=None),
                )
            except RetrievalError as exc:
                fail(str(exc))
            typer.echo(format_result(result))
            summary[m] = result.summary()
        typer.echo(json.dumps(summary))
