"""`ragserver routes ...`: a collection's routing chain and curated answers (docs/ROUTING.md).

Given `--url`, each command asks that running server's admin API (`--api-key` or RAGSERVER_API_KEY);
without it, it works on the data dir's database directly as the operator of `--tenant`. Every command's
last line is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import KeyOpt, TenantOpt, UrlOpt, call_server, emit_json, fail, parse_file, run_local
from app.container import Container

routes_app = typer.Typer(help="Routing chains (rules, curated answers, model policy).", no_args_is_help=True)
curated_app = typer.Typer(help="Curated answers: candidates from reviewed corrections, approve, reject.")
routes_app.add_typer(curated_app, name="curated")

CollectionArg = Annotated[str, typer.Argument(help="Collection name.")]


@routes_app.command("set")
def set_(
    collection: CollectionArg,
    file: Annotated[
        Path, typer.Option("--file", "-f", exists=True, dir_okay=False, help="The chain's YAML.")
    ],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Replace the collection's routing chain (every replica uses it within experiments.refresh_s)."""
    from app.routing.chain import parse_chain

    text, chain = parse_file(file, parse_chain)
    if url:
        path = f"/v1/admin/collections/{collection}/routes"
        data = call_server(url, api_key, "PUT", path, content=text, content_type="application/yaml")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.routing.set_chain(p, collection, chain)

        data = run_local(tenant, work)
    emit_json(data)


@routes_app.command("show")
def show(
    collection: CollectionArg, url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None
) -> None:
    """The collection's routing chain."""
    if url:
        data = call_server(url, api_key, "GET", f"/v1/admin/collections/{collection}/routes")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.routing.show(p, collection)

        data = run_local(tenant, work)
    for stage in (data["chain"] or {}).get("stages", []):
        typer.echo(f"{stage['type']:8} {stage['id']}", err=True)
    emit_json(data)


@routes_app.command("clear")
def clear(
    collection: CollectionArg, url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None
) -> None:
    """Remove the collection's routing chain (every question goes to the LLM)."""
    if url:
        data = call_server(url, api_key, "DELETE", f"/v1/admin/collections/{collection}/routes")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.routing.set_chain(p, collection, None)

        data = run_local(tenant, work)
    emit_json(data)


@curated_app.command("list")
def curated_list(
    collection: CollectionArg,
    status: Annotated[str | None, typer.Option(help="candidate, approved, stale or rejected.")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """The collection's curated answers."""
    if status is not None and status not in ("candidate", "approved", "stale", "rejected"):
        fail("--status is candidate, approved, stale or rejected")
    if url:
        query = f"?status={status}" if status else ""
        data = call_server(url, api_key, "GET", f"/v1/admin/collections/{collection}/curated{query}")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return {"curated": [i.to_dict() for i in await c.routing.list_curated(p, collection, status)]}

        data = run_local(tenant, work)
    for item in data["curated"]:
        typer.echo(f"{item['id']:22} {item['status']:9} {item['question'][:70]}", err=True)
    emit_json(data)


@curated_app.command("add")
def curated_add(
    collection: CollectionArg,
    question: Annotated[str, typer.Option(help="The question it answers.")],
    answer: Annotated[str, typer.Option(help="The answer, as it will be served.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """A curated answer written by hand (a candidate until approved)."""
    if url:
        body = {"question": question, "answer": answer}
        data = call_server(url, api_key, "POST", f"/v1/admin/collections/{collection}/curated", body)
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return (await c.routing.add_curated(p, collection, question, answer)).to_dict()

        data = run_local(tenant, work)
    emit_json(data)


def _review(
    action: str, collection: str, item_id: str, url: str | None, key: str | None, tenant: str | None
) -> None:
    if url:
        data = call_server(url, key, "POST", f"/v1/admin/collections/{collection}/curated/{item_id}/{action}")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return (await c.routing.review(p, collection, item_id, action)).to_dict()

        data = run_local(tenant, work)
    typer.echo(json.dumps(data))


@curated_app.command("approve")
def curated_approve(
    collection: CollectionArg,
    item_id: Annotated[str, typer.Argument(help="The curated answer's id (cur_...).")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Approve: served from now on to questions close enough to its own."""
    _review("approve", collection, item_id, url, api_key, tenant)


@curated_app.command("reject")
def curated_reject(
    collection: CollectionArg,
    item_id: Annotated[str, typer.Argument(help="The curated answer's id (cur_...).")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Reject a candidate (or withdraw an approved answer)."""
    _review("reject", collection, item_id, url, api_key, tenant)


def _print_report(title: str, found: dict[str, Any]) -> None:
    typer.echo(title, err=True)
    typer.echo(f"  {'label':24}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}", err=True)
    for label, row in found["per_class"].items():
        typer.echo(
            f"  {label:24}{row['precision']:>10.3f}{row['recall']:>8.3f}{row['f1']:>8.3f}{row['support']:>9}",
            err=True,
        )
    typer.echo(f"  macro-F1 {found['macro_f1']:.3f}  accuracy {found['accuracy']:.3f}", err=True)


def _labelled(path: Path) -> tuple[list[str], list[str], str]:
    from app.routing.classifier import read_labels

    try:
        return read_labels(path)
    except (OSError, ValueError) as exc:
        fail(str(exc))


@routes_app.command("train")
def train_classifier(
    labels: Annotated[Path, typer.Option(help='Labelled questions: JSON lines {"text": ..., "label": ...}.')],
    out: Annotated[
        Path, typer.Option(help="Where to write the model and its card (under the data dir's models).")
    ],
    seed: Annotated[int, typer.Option(help="The split's and the fit's seed.")] = 0,
    test_share: Annotated[float, typer.Option(min=0.05, max=0.9, help="Held out for the card.")] = 0.3,
    min_precision: Annotated[
        float, typer.Option(min=0.5, max=1.0, help="Each class's confidence threshold is fitted to this.")
    ] = 0.95,
) -> None:
    """Train a question classifier (logistic regression on this server's query embeddings) for a routing
    chain's classifier stage. Writes classifier.json and card.json (data hash, counts, held-out per-class
    precision / recall / F1, confusion matrix, fitted thresholds). The last line is JSON."""
    from app.container import open_container_sync
    from app.routing.classifier import train
    from app.settings import Settings

    texts, names, digest = _labelled(labels)
    with open_container_sync(Settings()) as container:
        embedder = container.query_embedder
        typer.echo(f"embedding {len(texts)} questions with {embedder.model_id} ...", err=True)
        try:
            model = train(
                texts,
                names,
                embedder.embed,
                embedder=embedder.model_id,
                data_hash=digest,
                seed=seed,
                test_share=test_share,
                min_precision=min_precision,
            )
        except ValueError as exc:
            fail(str(exc))
        roots = container.model_roots
    model.save(out)
    if not any(out.resolve().is_relative_to(root) for root in roots):
        typer.echo(
            f"note: {out} is outside collections.model_roots; a chain can only use it from there", err=True
        )
    held_out = model.card["held_out_report"]
    _print_report(f"held out ({model.card['held_out']} questions):", held_out)
    thresholded = model.card["held_out_report_thresholded"]
    typer.echo(
        f"  with the fitted thresholds {model.thresholds}: macro-F1 {thresholded['macro_f1']:.3f}, "
        f"{thresholded['handed_on']} handed on",
        err=True,
    )
    emit_json({**held_out, "thresholded": thresholded, "thresholds": model.thresholds, "out": str(out)})


@routes_app.command("eval")
def eval_classifier(
    model: Annotated[Path, typer.Option(help="A directory written by `routes train`.")],
    labels: Annotated[Path, typer.Option(help='Labelled questions: JSON lines {"text": ..., "label": ...}.')],
) -> None:
    """A trained classifier on any labelled file: per-class precision / recall / F1, macro-F1, accuracy,
    confusion matrix, without and with its thresholds. The last line is JSON."""
    import numpy as np

    from app.container import open_container_sync
    from app.routing.classifier import RouteClassifier, evaluate
    from app.settings import Settings

    try:
        classifier = RouteClassifier.load(model)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{model}: not a classifier written by `routes train` ({exc})")
    texts, names, _ = _labelled(labels)
    with open_container_sync(Settings()) as container:
        embedder = container.query_embedder
        if embedder.model_id != classifier.embedder:
            fail(
                f"{model} was trained on {classifier.embedder!r}; "
                f"this server embeds with {embedder.model_id!r}"
            )
        vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    found = evaluate(classifier, names, vectors)
    _print_report(f"{labels} ({len(texts)} questions):", found)
    emit_json(found)


@routes_app.command("replay")
def replay(
    collection: CollectionArg,
    questions: Annotated[
        Path, typer.Option(help="Questions .jsonl: a feedback export (`answer_given` kept), CMU QA, ...")
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write one JSON line per question here.")] = None,
    tenant: TenantOpt = None,
) -> None:
    """Which stage of the collection's chain would answer each question (on this data dir, no LLM call),
    the answers that would change, and the tokens and estimated cost saved (each question the chain
    answers saves the collection's mean LLM answer: its recent traces' tokens at its model's prices).
    The last line is JSON."""

    rows = _questions(questions, limit)

    async def work(c: Container, p: Any) -> dict[str, Any]:
        from app.llm.base import Usage

        store = await c.retrieval.resolve_collection(collection, principal=p)
        if await c.routing.chain_for(store) is None:
            fail(f"collection {collection!r} has no routing chain (`ragserver routes set`)")
        recent = [
            t for t in await c.trace_store.search(collections=[store], limit=1000) if t.outcome != "error"
        ]
        llm_answers = [
            t for t in recent if (t.params.get("routing") or {}).get("answered_by", "llm") == "llm"
        ]
        prompt = sum(t.usage.get("prompt_tokens", 0) for t in llm_answers) / max(1, len(llm_answers))
        completion = sum(t.usage.get("completion_tokens", 0) for t in llm_answers) / max(1, len(llm_answers))
        profile = await c.profiles.for_store(store)
        model = await c.models.get(p.tenant, profile.model)
        per_answer_cost = model.cost(Usage(round(prompt), round(completion)))
        decided = []
        for row in rows:
            routed = await c.routing.route(store, row["question"])
            by = routed.answered_by if routed.final else "llm"
            given = row.get("answer_given")
            decided.append(
                {
                    "question": row["question"],
                    "answered_by": by,
                    "route": routed.route if routed.final else None,
                    "answer": routed.answer if routed.final else None,
                    "changes": bool(routed.final and given is not None and given != routed.answer),
                    "decisions": routed.decisions,
                }
            )
        saved = sum(1 for d in decided if d["answered_by"] != "llm")
        kinds = [d["answered_by"] for d in decided]
        return {
            "collection": collection,
            "questions": len(decided),
            "stage_shares": {k: round(kinds.count(k) / len(kinds), 4) for k in sorted(set(kinds))},
            "answers_changed": sum(1 for d in decided if d["changes"]),
            "llm_answers_saved": saved,
            "tokens_per_llm_answer": {
                "prompt": round(prompt, 1),
                "completion": round(completion, 1),
                "from_traces": len(llm_answers),
            },  # fmt: skip
            "tokens_saved": round(saved * (prompt + completion)),
            "model": model.name,
            "estimated_cost_saved": round(saved * per_answer_cost, 6),
            "rows": decided,
        }

    summary = run_local(tenant, work)
    if out is not None:
        with out.open("w", encoding="utf-8") as handle:
            for row in summary["rows"]:
                handle.write(json.dumps(row) + "\n")
    for row in summary["rows"]:
        if row["answered_by"] != "llm":
            mark = "*" if row["changes"] else " "
            typer.echo(
                f"{mark} {row['answered_by']:10} {row['route'] or '':24} {row['question'][:70]}", err=True
            )
    typer.echo(
        f"{summary['questions']} questions: {summary['stage_shares']}; {summary['llm_answers_saved']} LLM "
        f"answers saved (~{summary['tokens_saved']} tokens, {summary['estimated_cost_saved']} at "
        f"{summary['model']}'s prices); {summary['answers_changed']} answers would change (*)",
        err=True,
    )
    emit_json({k: v for k, v in summary.items() if k != "rows"})


def _questions(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """The rows of a questions file that have a question (JSON lines)."""
    rows: list[dict[str, Any]] = []
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                fail(f"{path}:{number}: a row needs a `question`")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")
    if not rows:
        fail(f"{path} has no questions")
    return rows


@routes_app.command("labels")
def labels(
    collection: CollectionArg,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", exists=True, dir_okay=False, help="The labeler's YAML (field, labels/model)."
        ),
    ] = None,
    clear: Annotated[bool, typer.Option(help="Stop labelling the collection's documents.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Show, set (--file) or clear the collection's document labeler: a label written into each new or
    changed document's metadata at ingestion (zero-shot from label descriptions, or a trained classifier)."""
    from app.services.document_labels import parse_labeler

    if file is not None and clear:
        fail("give --file or --clear, not both")
    spec = parse_file(file, parse_labeler)[1] if file is not None else None
    path = f"/v1/admin/collections/{collection}/document-labels"
    if url:
        if file is not None:
            data = call_server(
                url, api_key, "PUT", path, spec.model_dump(exclude_none=True) if spec else None
            )
        else:
            data = call_server(url, api_key, "DELETE" if clear else "GET", path)
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            if file is not None or clear:
                return await c.document_labels.set(p, collection, spec)
            return await c.document_labels.get(p, collection)

        data = run_local(tenant, work)
    emit_json(data)
