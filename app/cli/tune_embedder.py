"""`ragserver tune embedder` (fine-tune the local embedder on judged queries or pairs) and
`ragserver tune split-qrels` (hold out a dev part of a qrels file to measure the tuned model on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import fail


def tune_embedder(
    out: Annotated[Path, typer.Option(help="Directory to write the tuned model to (replaced).")],
    corpus: Annotated[Path | None, typer.Option(help="BEIR corpus.jsonl ({_id, title, text}).")] = None,
    queries: Annotated[
        Path | None, typer.Option(help="BEIR queries.jsonl: only the queries judged in --qrels are read.")
    ] = None,
    qrels: Annotated[
        Path | None, typer.Option(help="The training split's judgements (.tsv); keep test splits out.")
    ] = None,
    pairs: Annotated[
        Path | None, typer.Option(help="JSON lines of {query, positive} pairs (e.g. from feedback).")
    ] = None,
    base_model: Annotated[
        Path | None, typer.Option(help="sentence-transformers directory to start from (default: packaged).")
    ] = None,
    epochs: Annotated[float, typer.Option(min=0.1, help="Passes over the training pairs (at most).")] = 3.0,
    batch_size: Annotated[int, typer.Option(min=2, help="Pairs per batch (in-batch negatives).")] = 32,
    learning_rate: Annotated[float, typer.Option(min=1e-7, max=1e-2)] = 3e-5,
    hard_negatives: Annotated[int, typer.Option(min=0, max=8, help="BM25 hard negatives per pair.")] = 1,
    holdout: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of training queries held out to stop early.")
    ] = 0.1,
    max_seq_length: Annotated[int, typer.Option(min=16, help="Training length of texts, in tokens.")] = 128,
    budget: Annotated[
        float, typer.Option(min=10, help="Seconds of training at most (the best checkpoint is kept).")
    ] = 18 * 60,
    title_pairs: Annotated[
        int, typer.Option(min=0, help="Also train on N (title, document) pairs drawn from the corpus.")
    ] = 0,
    seed: Annotated[int, typer.Option()] = 42,
) -> None:
    """Fine-tune the local embedder (MultipleNegativesRankingLoss with BM25 hard negatives) on CPU, stop
    on held-out queries, and write the model with a card. The last line is the card as JSON."""
    from evals.embedder_tuning import TuneConfig, TuningError, build_training_data
    from evals.embedder_tuning import tune_embedder as run

    given = [p for p in (corpus, queries, qrels, pairs, base_model) if p is not None]
    missing = [str(p) for p in given if not p.exists()]
    if missing:
        fail(f"no such file: {', '.join(missing)}")
    if qrels is None and pairs is None:
        fail("give --qrels (with --corpus and --queries) or --pairs")
    config = TuneConfig(
        base_model=str(base_model) if base_model else None,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        hard_negatives=hard_negatives,
        holdout=holdout if qrels is not None else 0.0,
        max_seq_length=max_seq_length,
        budget_s=budget,
        seed=seed,
    )
    try:
        data = build_training_data(
            corpus=corpus,
            queries=queries,
            qrels=qrels,
            pairs=pairs,
            holdout=config.holdout,
            seed=seed,
            title_pairs=title_pairs,
        )
        card = run(data, out, config, log_line=lambda line: typer.echo(line, err=True))
    except (TuningError, ValueError) as exc:
        fail(str(exc))
    held = card["heldout"]
    if held["before"]:
        typer.echo(
            f"held-out nDCG@10 {held['before'].get('ndcg@10')} -> {held['after'].get('ndcg@10')} "
            f"({held['queries']} queries)"
        )
    typer.echo(f"{card['steps']} steps in {card['seconds']} s; model written to {out}")
    typer.echo(json.dumps(card))


def split_qrels(
    qrels: Annotated[Path, typer.Option(help="The qrels (.tsv) to split by query.")],
    train_out: Annotated[Path, typer.Option(help="Where the part to tune on goes.")],
    dev_out: Annotated[Path, typer.Option(help="Where the held-out dev part goes.")],
    dev_fraction: Annotated[float, typer.Option(min=0.01, max=0.9)] = 0.2,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Split a qrels file by query into a part to tune on and a dev part to measure on (seeded)."""
    from evals.embedder_tuning import split_qrels as run

    if not qrels.is_file():
        fail(f"no such file: {qrels}")
    try:
        n_train, n_dev = run(qrels, dev_fraction, seed, train_out, dev_out)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps({"train_queries": n_train, "dev_queries": n_dev}))
