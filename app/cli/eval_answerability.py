"""`ragserver eval answerability`: answer a labelled answerability set through the chat pipeline, fit
when to abstain, and report how often it abstains on answerable and unanswerable questions
(app/evaluation/answerability.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import fail


def eval_answerability(
    questions: Annotated[Path, typer.Option("--set", help="Labelled set (evals/make_answerability.py).")],
    corpus: Annotated[Path, typer.Option(help="Articles .jsonl; the set's `corpus_excludes` are left out.")],
    out: Annotated[Path, typer.Option(help="Run directory: rows.jsonl, answerability.json, summary.json.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    fit_model: Annotated[bool, typer.Option("--fit/--no-fit", help="Fit a model on the train split.")] = True,
    pool: Annotated[
        Path | None,
        typer.Option(
            help="CMU QA questions .jsonl (questions-dev.jsonl): every question of the set's articles, "
            "judged before generation only (retrieval, no LLM), so the answerable allowance is checked "
            "on hundreds of answerable questions, not on the set's few."
        ),
    ] = None,
    max_answerable_abstained: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="The fit's allowance: the most answerable train questions (the set's and the drafted "
            "pool's) it may abstain on; the undrafted pool's too, before generation.",
        ),
    ] = 0.10,
    pool_drafts: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also answer the first N pool questions of each split (resumable, pool-drafts.jsonl), so "
            "both stages' answerable allowance is checked on them and the fit trains on them.",
        ),
    ] = 0,
) -> None:
    """Answer every question (resuming a run in OUT), fit the abstention model on the train split, and
    print the share abstained per split and kind, for the shipped model and the one fitted now."""
    from app.cli.common import container_for
    from app.evaluation.answerability import fit, load_set, measure
    from app.evaluation.corpus import ensure_corpus_collection
    from app.services.answerability import load_model

    missing = [p for p in (questions, corpus, pool) if p is not None and not p.is_file()]
    if missing:
        fail(f"{missing[0]} not found")
    rows = load_set(questions)[:limit] if limit else load_set(questions)
    excludes = set(rows[0].get("corpus_excludes") or []) if rows else set()
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "corpus.jsonl"
    lines = [line for line in corpus.read_text().splitlines() if line.strip()]
    kept.write_text("".join(line + "\n" for line in lines if json.loads(line)["_id"] not in excludes))
    done_path = out / "rows.jsonl"
    done = {r["id"]: r for r in load_set(done_path)} if done_path.is_file() else {}
    pooled: list[dict[str, Any]] = []
    with container_for("eval-answerability") as (container, name):
        report = ensure_corpus_collection(container, kept, name)
        typer.echo(json.dumps(report), err=True)
        todo = [r for r in rows if r["id"] not in done]
        asyncio.run(_collect(container, name, todo, done, done_path))
        if pool is not None:
            pooled = asyncio.run(_pool(container, name, pool, rows, out / "pool.jsonl"))
            if pool_drafts:
                drafts = out / "pool-drafts.jsonl"
                pooled = asyncio.run(_draft_pool(container, name, pooled, pool_drafts, drafts))
    answered = [done[r["id"]] for r in rows if r["id"] in done]
    try:
        shipped = load_model()
    except ValueError as exc:  # fitted on other features: measured as absent
        typer.echo(f"the shipped model is not measured: {exc}", err=True)
        shipped = None
    summary: dict[str, Any] = {"rows": len(answered), "shipped": measure([*answered, *pooled], shipped)}
    if fit_model:
        model = fit(answered, questions, pool=pooled, max_answerable_abstained=max_answerable_abstained)
        (out / "answerability.json").write_text(json.dumps(model.to_dict(), indent=2) + "\n")
        summary["fitted"] = measure([*answered, *pooled], model)
        summary["fitted_thresholds"] = {"before": model.before.threshold, "after": model.after.threshold}
        summary["fitted_weights"] = {"before": model.before.weights, "after": model.after.weights}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(summary))


async def _collect(
    container: Any, collection: str, todo: list[dict[str, Any]], done: dict[str, Any], path: Path
) -> None:
    """Answer `todo` one by one, appending each row with its answer and sources to `path` as it is
    answered. Abstention is off while answering: every question gets a draft, and the model (the shipped
    one and the one fitted now) is applied to it afterwards, with the same arithmetic as the server."""
    from app.auth.principal import Principal
    from app.services.chat_types import ChatQuery

    container.settings.answers.abstain = False
    with path.open("a") as sink:
        for i, row in enumerate(todo, start=1):
            query = ChatQuery(message=row["question"], collection=collection, remember=False)
            result = await container.chat.chat(query, principal=Principal.operator())
            judged = result.retrieval.get("answerability") or {}
            record = {
                **row,
                "answer": result.answer,
                "abstained": result.abstained,
                "search_query": result.query,
                # What the evidence was computed from, so a new feature can be tried without answering
                # again (`app.evaluation.answerability.recompute`).
                "sources": [_source(c) for c in result.contexts],
                "cited": [_source(c) for c in result.citations],
            }
            # The draft's own "I don't know" (its text is replaced by the abstention's).
            record["evidence"] = {"dont_know": bool(judged.get("dont_know"))}
            done[row["id"]] = record
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            print(f"{i}/{len(todo)} {row['kind']:<10} {result.answer[:70]!r}", file=sys.stderr)


async def _pool(
    container: Any, collection: str, path: Path, rows: list[dict[str, Any]], sink: Path
) -> list[dict[str, Any]]:
    """Every usable question of `path` about an article of the set (its split; not a question of the
    set), with the sources retrieval gives it: answerable questions for the before-generation check.
    Kept in `sink` (a rerun reads it)."""
    from app.evaluation.answerability import load_set
    from app.services.chat_types import Citation
    from evals.make_answerability import usable_questions

    if sink.is_file():
        return load_set(sink)
    split = {r["article_id"]: r["split"] for r in rows if r["kind"] != "absent"}
    asked = {r["question"].strip().lower() for r in rows}
    out = []
    for q in usable_questions(load_set(path)):
        if q.get("article_id") not in split or q["question"].strip().lower() in asked:
            continue
        found = await container.retrieval.retrieve(collection, q["question"], top_k=5)
        sources = [Citation.from_hit(i, hit) for i, hit in enumerate(found.hits, start=1)]
        out.append(
            {
                "id": f"pool-{q['id']}",
                "question": q["question"],
                "label": "answerable",
                "kind": "pool",
                "article_id": q["article_id"],
                "split": split[q["article_id"]],
                "answer": "",
                "search_query": q["question"],
                "sources": [_source(c) for c in sources],
                "cited": [],
                "evidence": {"dont_know": False},
            }
        )
    sink.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return out


async def _draft_pool(
    container: Any, collection: str, pooled: list[dict[str, Any]], per_split: int, path: Path
) -> list[dict[str, Any]]:
    """`pooled` with its first `per_split` questions of each split answered through the chat pipeline
    (as the set's questions are; appended to `path` as they are answered, so a rerun resumes)."""
    from app.evaluation.answerability import load_set

    done = {r["id"]: r for r in load_set(path)} if path.is_file() else {}
    picked: list[dict[str, Any]] = []
    for split in ("train", "test"):
        picked += [{**r, "drafted": True} for r in pooled if r["split"] == split][:per_split]
    await _collect(container, collection, [r for r in picked if r["id"] not in done], done, path)
    return [done.get(r["id"], r) for r in pooled]


def _source(citation: Any) -> dict[str, Any]:
    return {"n": citation.n, "title": citation.title, "text": citation.text, "score": citation.score}
