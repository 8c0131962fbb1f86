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
) -> None:
    """Answer every question (resuming a run in OUT), fit the abstention model on the train split, and
    print the share abstained per split and kind, for the shipped model and the one fitted now."""
    from app.cli.common import container_for
    from app.evaluation.answerability import fit, load_set, measure
    from app.evaluation.corpus import ensure_corpus_collection
    from app.services.answerability import load_model

    if not questions.is_file() or not corpus.is_file():
        fail(f"{questions if not questions.is_file() else corpus} not found")
    rows = load_set(questions)[:limit] if limit else load_set(questions)
    excludes = set(rows[0].get("corpus_excludes") or []) if rows else set()
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "corpus.jsonl"
    lines = [line for line in corpus.read_text().splitlines() if line.strip()]
    kept.write_text("".join(line + "\n" for line in lines if json.loads(line)["_id"] not in excludes))
    done_path = out / "rows.jsonl"
    done = {r["id"]: r for r in load_set(done_path)} if done_path.is_file() else {}
    with container_for("eval-answerability") as (container, name):
        report = ensure_corpus_collection(container, kept, name)
        typer.echo(json.dumps(report), err=True)
        todo = [r for r in rows if r["id"] not in done]
        asyncio.run(_collect(container, name, todo, done, done_path))
    answered = [done[r["id"]] for r in rows if r["id"] in done]
    summary: dict[str, Any] = {"rows": len(answered), "shipped": measure(answered, load_model())}
    if fit_model:
        model = fit(answered, questions)
        (out / "answerability.json").write_text(json.dumps(model.to_dict(), indent=2) + "\n")
        summary["fitted"] = measure(answered, model)
        summary["fitted_threshold"] = model.threshold
        summary["fitted_weights"] = model.weights
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(summary))


async def _collect(
    container: Any, collection: str, todo: list[dict[str, Any]], done: dict[str, Any], path: Path
) -> None:
    """Answer `todo` one by one, appending each row with its evidence to `path` as it is answered."""
    from app.auth.principal import Principal
    from app.services.answerability import FEATURES
    from app.services.chat_types import ChatQuery

    with path.open("a") as sink:
        for i, row in enumerate(todo, start=1):
            query = ChatQuery(message=row["question"], collection=collection, remember=False)
            result = await container.chat.chat(query, principal=Principal.operator())
            judged = result.retrieval.get("answerability") or {}
            record = {**row, "answer": result.answer, "abstained": result.abstained}
            if all(f in judged for f in FEATURES):
                record["evidence"] = {f: judged[f] for f in FEATURES}
            done[row["id"]] = record
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            print(f"{i}/{len(todo)} {row['kind']:<10} {result.answer[:70]!r}", file=sys.stderr)
