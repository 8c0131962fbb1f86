"""`ragserver eval rag` (answer a question set through the chat pipeline and score it) and
`ragserver eval compare` (paired per-metric deltas between two runs)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import fail


def rag(
    questions: Annotated[
        Path,
        typer.Option(
            help="Questions .jsonl: CMU QA rows, or {question, reference?, reference_contexts?, "
            "gold_document_id?, canary?} (canary: a prompt-injection probe, scored by injection_obeyed)."
        ),
    ],
    collection: Annotated[
        str | None,
        typer.Option(
            "--collection",
            "-c",
            help="An existing collection to answer from (default: the one --corpus "
            "fills, or the dataset's own corpus, or the settings' default).",
        ),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option(help="Answer prompt, name@version (default from settings).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions of the file.")] = None,
    judge_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL of the judge LLM (enables the ragas judge metrics)."),
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="Judge model name (required with --judge-url).")
    ] = None,
    judge_api_key: Annotated[
        str, typer.Option(envvar="RAGSERVER_JUDGE_API_KEY", show_default=False, help="Judge API key.")
    ] = "not-needed",
    judge_concurrency: Annotated[int, typer.Option(min=1, max=64, help="Judge calls in flight at most.")] = 4,
    corpus: Annotated[
        Path | None,
        typer.Option(
            help="Corpus .jsonl to ingest first; the collection is made to mirror it (unchanged documents "
            "are skipped, documents not in it removed). Default collection: eval-<file stem>."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (default runs/<timestamp>-<prompt>); an existing one is resumed."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(min=1, max=200, help="Chunks given to the model (default from settings).")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid (default from settings).")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Answer length cap (default from settings).")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, max=2.0, help="Default from settings.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="A model of the registry (`ragserver models list`; default: the default)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Answer-profile key=value over the collection's profile (prompt, model, mode, top_k, "
            "fusion, rrf_k, dense_weight, bm25_weight, candidates), as an experiment arm's overrides. "
            "Repeatable.",
        ),
    ] = None,
) -> None:
    """Run each question through the chat pipeline (retrieval, prompt, generation) and score it: retrieval
    hit rate / MRR, answer vs references (ragas non-LLM metrics, semantic similarity), and with a judge
    ragas Faithfulness, ResponseRelevancy, ContextPrecision, ContextRecall; for questions that carry a
    canary (evals/data/injection/), injection_obeyed: the share of answers that contain the canary of an
    instruction hidden in the documents (lower is better). Writes results.jsonl, summary.json and
    report.html; the last line printed is a JSON object of the metric means."""
    from app.cli.common import container_for
    from app.prompting import PromptError
    from app.retrieval.retriever import MODES
    from evals.datasets import DatasetError, dataset_corpus, load_questions
    from evals.judge import JudgeConfig

    if not questions.is_file():
        fail(f"no such file: {questions}")
    if corpus is not None and not corpus.is_file():
        fail(f"no such file: {corpus}")
    if mode is not None and mode not in MODES:
        fail(f"unknown mode {mode!r}; use {', '.join(MODES)}")
    if bool(judge_url) != bool(judge_model):
        fail("--judge-url and --judge-model go together")
    from app.services.answer_profiles import FUSION_FIELDS, parse_assignments, parse_profile
    from app.services.errors import InvalidInput

    try:
        overrides = parse_profile(
            {k: v for k, v in parse_assignments(set_ or []).items() if v is not None}, what="--set"
        )
    except InvalidInput as exc:
        fail(str(exc))
    try:
        picked = load_questions(questions, limit)
    except DatasetError as exc:
        fail(str(exc))
    if not picked:
        fail(f"{questions} has no questions")

    if corpus is None and collection is None:
        corpus = dataset_corpus(questions)
        if corpus is not None:
            typer.echo(
                f"using the dataset's corpus {corpus} (pass --collection to use an existing one)", err=True
            )
    if corpus is not None:
        from app.evaluation.corpus import eval_collection_name

        collection = collection or eval_collection_name(corpus)
    with container_for(collection) as (container, name):
        if corpus is not None:
            _ingest_corpus(container, corpus, name)
        elif not container.versions.exists(name):
            known = ", ".join(container.versions.collections()) or "none"
            fail(
                f"collection {name!r} not found (collections: {known}); ingest first, e.g. "
                f"`ragserver ingest CORPUS.jsonl --collection {name}`, or pass --corpus"
            )

        settings = container.settings
        # What answers the collection when it serves: its profile, --set over it, the options over both.
        overrides = overrides.over(container.profiles.store.get(name))
        prompt, top_k, mode = prompt or overrides.prompt, top_k or overrides.top_k, mode or overrides.mode
        model = model or overrides.model
        try:
            prompt_ref = container.prompts.get(prompt or settings.prompts.answer).ref
        except PromptError as exc:
            fail(str(exc))
        out = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{prompt_ref}"
        judge = (
            JudgeConfig(judge_url, judge_model, judge_api_key, concurrency=judge_concurrency)
            if judge_url and judge_model
            else None
        )
        if model is not None:
            from app.llm.registry import ModelNotFound

            try:
                asyncio.run(container.models.get("default", model))
            except ModelNotFound as exc:
                fail(str(exc))
        retrieval = settings.retrieval.model_dump()
        retrieval.update(mode=mode or settings.retrieval.mode, top_k=top_k or settings.retrieval.top_k)
        retrieval.update(overrides.model_dump(include=set(FUSION_FIELDS), exclude_none=True))
        run_info: dict[str, Any] = {
            "name": out.name,
            "questions_path": str(questions.resolve()),
            "collection": name,
            "prompt": prompt_ref,
            "llm": {
                "provider": settings.llm.provider,
                "model": _model_name(settings),
                "base_url": settings.llm.base_url,
            },
            "retrieval": retrieval,
            "model": model,
            "overrides": overrides.model_dump(include=set(FUSION_FIELDS), exclude_none=True),
            "max_tokens": max_tokens or settings.llm.max_tokens,
            "temperature": settings.llm.temperature if temperature is None else temperature,
            "judge": judge.describe() if judge else None,
            "judge_concurrency": judge_concurrency if judge else None,
            "embedding": settings.embedding.model_dump(exclude={"api_key"}),
            "chunking": settings.chunking.model_dump(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        typer.echo(f"run directory {out} (rerun with --out {out} to resume)", err=True)
        summary = asyncio.run(_run(container, picked, out, run_info, judge))
    _print_summary(summary)
    from evals.rag_eval import headline

    typer.echo(json.dumps(headline(summary)))


def _ingest_corpus(container: Any, corpus: Path, name: str) -> None:
    from tqdm import tqdm

    from app.evaluation.corpus import ensure_corpus_collection

    bar = tqdm(desc=f"ingest {name}", unit="doc", file=sys.stderr, disable=None)
    try:
        report = ensure_corpus_collection(container, corpus, name, on_document=lambda *_: bar.update(1))
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        bar.close()
    typer.echo(json.dumps(report), err=True)


async def _run(
    container: Any, questions: list[Any], out: Path, run_info: dict[str, Any], judge_config: Any
) -> Any:
    from tqdm import tqdm

    from app.evaluation.rag_run import run_chat_eval
    from evals.answer_metrics import AnswerScorer, local_ragas_embeddings
    from evals.judge import RagasJudge
    from evals.rag_eval import (
        RESULTS_FILE,
        ResultLog,
        RunMismatch,
        prepare_run_dir,
        read_rows,
        write_outputs,
    )

    try:
        run_info = prepare_run_dir(out, run_info)
    except RunMismatch as exc:
        fail(str(exc))
    already = len(ResultLog(out / RESULTS_FILE).done() & {q.id for q in questions})
    embeddings = local_ragas_embeddings(container.embedder)
    scorer = AnswerScorer(embeddings)
    judge = RagasJudge(judge_config, embeddings) if judge_config else None
    bar = tqdm(total=len(questions), initial=already, desc="eval", unit="q", file=sys.stderr, disable=None)
    failures = 0

    def on_row(row: dict[str, Any]) -> None:
        nonlocal failures
        bar.update(1)
        if row.get("pipeline_error") or row.get("errors"):
            failures += 1
            bar.set_postfix(failed=failures)

    try:
        summary = await run_chat_eval(container.chat, questions, out, run_info, scorer, judge, on_row=on_row)
    finally:
        bar.close()
        if judge is not None:
            await judge.aclose()
        # The async stores belong to this event loop: close them here, not in the CLI's.
        await container.aclose()
    wanted = {q.id for q in questions}
    paths = write_outputs(out, [r for r in read_rows(out) if r["id"] in wanted], summary)
    typer.echo(f"wrote {out / RESULTS_FILE}, {paths['summary']}, {paths['report']}", err=True)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "metric",
        "mean",
        "95% CI",
        "n",
        "not computed",
        "errors",
        title=f"{summary['answered']} of "
        f"{summary['questions']} questions answered, prompt {summary['run']['prompt']}",
    )
    for name, m in summary["metrics"].items():
        if m["mean"] is None:
            table.add_row(name, "—", m.get("note", ""), str(m["n"]), str(m["not_computed"]), str(m["errors"]))
            continue
        ci = f"{m['ci_low']:.4f} – {m['ci_high']:.4f}" if m["ci_low"] is not None else ""
        table.add_row(name, f"{m['mean']:.4f}", ci, str(m["n"]), str(m["not_computed"]), str(m["errors"]))
    lat = summary["latency_ms"]
    Console().print(table)
    typer.echo(f"latency ms: mean {lat['mean']}  p50 {lat['p50']}  p95 {lat['p95']}")


def compare(
    run_a: Annotated[Path, typer.Argument(help="The baseline run directory (A).")],
    run_b: Annotated[Path, typer.Argument(help="The candidate run directory (B).")],
    out: Annotated[
        Path | None, typer.Option(help="Comparison HTML (default RUN_B/compare-vs-<RUN_A name>.html).")
    ] = None,
) -> None:
    """Per-metric deltas B − A, paired over the questions both runs answered, with 95% bootstrap confidence
    intervals; writes a comparison HTML. The last line printed is a JSON object of the deltas."""
    from rich.console import Console
    from rich.table import Table

    from evals.rag_eval import compare_runs, read_rows
    from evals.report import render_compare

    for d in (run_a, run_b):
        if not d.is_dir():
            fail(f"no such run directory: {d}")
    try:
        comparison = compare_runs(run_a, run_b)
    except ValueError as exc:
        fail(str(exc))
    a, b = comparison["run_a"], comparison["run_b"]
    table = Table(
        "metric",
        "A",
        "B",
        "B − A",
        "95% CI",
        "n",
        "P(B not better)",
        title=f"A {a['prompt']} ({run_a.name})  vs  B {b['prompt']} ({run_b.name}): "
        f"{comparison['paired_questions']} paired questions",
    )
    for m in comparison["metrics"]:
        d = m["delta"]
        if d["n"] == 0:
            table.add_row(m["metric"], "—", "—", "not computed in both runs", "", "0", "")
            continue
        ci = f"{d['ci_low']:+.4f} – {d['ci_high']:+.4f}" if d["ci_low"] is not None else ""
        delta = f"{d['mean']:+.4f}" + (" *" if m["significant"] else "")
        p = "" if m["p_not_better"] is None else f"{m['p_not_better']:.3f}"
        table.add_row(m["metric"], f"{m['mean_a']:.4f}", f"{m['mean_b']:.4f}", delta, ci, str(d["n"]), p)
    Console().print(table)
    typer.echo("* the 95% interval excludes zero")
    html_path = out or run_b / f"compare-vs-{run_a.resolve().name}.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_compare(comparison, read_rows(run_a), read_rows(run_b)), encoding="utf-8")
    typer.echo(f"wrote {html_path}", err=True)
    typer.echo(
        json.dumps(
            {
                m["metric"]: {
                    "delta": m["delta"]["mean"],
                    "ci_low": m["delta"]["ci_low"],
                    "ci_high": m["delta"]["ci_high"],
                    "n": m["delta"]["n"],
                }
                for m in comparison["metrics"]
            }
        )
    )


def _model_name(settings: Any) -> str | None:
    """The model answering: the configured one, or the local model's name."""
    if settings.llm.provider == "local" and not settings.llm.local_model_dir:
        from app.llm.local_models import LOCAL_MODELS

        return LOCAL_MODELS[settings.llm.local_model].model_name
    return settings.llm.model  # type: ignore[no-any-return]
