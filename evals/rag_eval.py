"""The RAG eval runner: every question through an answering callable, then retrieval, answer and (with a
judge) ragas judge metrics, one JSON line per question. The server's chat pipeline is one such callable
(`app/evaluation/rag_run.py`: `ChatService.chat`, remember=False); this module knows only `RagAnswer`.

A run directory holds:

- `run.json`: what produced the run (dataset, collection, prompt, model, retrieval settings, judge);
- `results.jsonl`: one row per question, appended as each finishes (so a killed run keeps its work);
- `summary.json` and `report.html`, written at the end (and rewritable from the rows at any time).

Rerunning into the same directory resumes: questions with a row are skipped, a row cut short by a kill is
dropped, and questions whose pipeline call failed are retried. A directory made with other settings is
refused rather than mixed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from evals.datasets import EvalQuestion
from evals.judge import JudgeSample, error_text
from evals.rag_metrics import (
    ANSWER_METRICS,
    JUDGE_METRICS,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    NO_JUDGE,
    MetricScores,
    canaries_found,
    citation_scores,
    injection_scores,
    retrieval_scores,
)
from evals.stats import bootstrap_mean, percentile

if TYPE_CHECKING:
    from evals.answer_metrics import AnswerScorer
    from evals.judge import RagasJudge

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
# run.json keys that must match for a directory to be resumed.
IDENTITY_KEYS = (
    "questions_path",
    "collection",
    "prompt",
    "llm",
    "retrieval",
    "max_tokens",
    "temperature",
    "judge",
)


class SourceChunk(Protocol):
    """A chunk given to the model, as the runner reads it (the chat service's `Citation` is one)."""

    @property
    def n(self) -> int: ...
    @property
    def document_id(self) -> str: ...
    @property
    def chunk_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


class RagAnswer(Protocol):
    """One answer and what produced it, as the runner records it (the chat service's `ChatResult` is one)."""

    @property
    def answer(self) -> str: ...
    @property
    def contexts(self) -> Sequence[SourceChunk]: ...  # every chunk the model was given
    @property
    def citations(self) -> Sequence[SourceChunk]: ...  # those the answer used
    @property
    def grounding(self) -> dict[str, Any] | None: ...
    @property
    def finish_reason(self) -> str: ...
    @property
    def query(self) -> str: ...  # the search query
    @property
    def latency_ms(self) -> float: ...
    @property
    def prompt(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def collection_version(self) -> str: ...
    @property
    def retrieval(self) -> dict[str, Any]: ...
    @property
    def usage(self) -> dict[str, int]: ...


Answerer = Callable[[EvalQuestion], Awaitable[RagAnswer]]
"""Answers one question; an exception is recorded as the question's pipeline error."""


class RunMismatch(RuntimeError):
    """The output directory holds a run made with other settings."""


class ResultLog:
    """results.jsonl: appended one flushed line per finished question; the last row per id wins."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        good: list[bytes] = []
        dropped = False
        for line in data.splitlines(keepends=True):
            try:
                row = json.loads(line)
                if not line.endswith(b"\n") or not isinstance(row, dict) or "id" not in row:
                    raise ValueError
            except ValueError:
                dropped = True  # a line cut short by a kill: that question runs again
                continue
            good.append(line)
            self.rows[str(row["id"])] = row
        if dropped:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(good))
            os.replace(tmp, self.path)

    def done(self) -> set[str]:
        """Ids whose row is final (pipeline failures are retried)."""
        return {qid for qid, row in self.rows.items() if not row.get("pipeline_error")}

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
        self.rows[str(row["id"])] = row


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """A run's rows (last per question id), in file order."""
    return list(ResultLog(Path(run_dir) / RESULTS_FILE).rows.values())


def prepare_run_dir(out_dir: Path, run_info: dict[str, Any]) -> dict[str, Any]:
    """Create the directory and run.json, or check that an existing run was made the same way."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        differs = [k for k in IDENTITY_KEYS if previous.get(k) != run_info.get(k)]
        if differs:
            detail = "; ".join(f"{k}: {previous.get(k)!r} -> {run_info.get(k)!r}" for k in differs)
            raise RunMismatch(f"{out_dir} holds a run made with other settings ({detail}); use another --out")
        return previous
    path.write_text(json.dumps(run_info, indent=2, ensure_ascii=False), encoding="utf-8")
    return run_info


def gold_titles(q: EvalQuestion) -> list[str]:
    """The gold article's title (CMU QA's `article_title`, "Abraham_Lincoln" -> "Abraham Lincoln")."""
    title = q.metadata.get("article_title") or q.metadata.get("gold_title")
    return [str(title).replace("_", " ")] if title else []


def _base_row(q: EvalQuestion) -> dict[str, Any]:
    return {
        "id": q.id,
        "question": q.question,
        **({"history": q.history} if q.history else {}),
        "references": q.references,
        "gold_document_ids": q.gold_document_ids,
        "canaries": q.canaries,
    }


def answered_row(
    q: EvalQuestion, result: RagAnswer, scores: MetricScores, judge_model: str | None
) -> dict[str, Any]:
    """A question's row: what was asked, answered and retrieved, what produced it, and every score."""
    return {
        **_base_row(q),
        "answer": result.answer,
        "contexts": [c.to_dict() for c in result.contexts],
        "citations": [
            {"n": c.n, "document_id": c.document_id, "chunk_id": c.chunk_id, "title": c.title}
            for c in result.citations
        ],
        "grounding": result.grounding,
        "finish_reason": result.finish_reason,
        "query": result.query,
        "scores": {name: scores.values.get(name) for name in METRIC_NAMES},
        "canaries_found": canaries_found(result.answer, q.canaries),
        "not_computed": scores.not_computed,
        "errors": scores.errors,
        "latency_ms": round(result.latency_ms, 2),
        "prompt": result.prompt,
        "model": result.model,
        "collection": result.collection,
        "collection_version": result.collection_version,
        "retrieval": result.retrieval,
        "usage": result.usage,
        "judge_model": judge_model,
        "finished_at": time.time(),
    }


async def run_rag_eval(
    answer: Answerer,
    questions: Sequence[EvalQuestion],
    out_dir: Path,
    run_info: dict[str, Any],
    scorer: AnswerScorer,
    judge: RagasJudge | None = None,
    *,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Answer and score every question not yet in `out_dir`; returns the summary of the whole run.

    Answers are generated one at a time (the local model runs one generation at a time anyway); a
    question's judge calls run in the background while the next question is answered, bounded by the
    judge's semaphore, with at most a few questions waiting on the judge at once. `answer` must answer
    the way `run_info` says (collection, prompt, retrieval, ...): resuming checks run_info, not answers.
    """
    out_dir = Path(out_dir)
    run_info = prepare_run_dir(out_dir, run_info)
    log = ResultLog(out_dir / RESULTS_FILE)
    done = log.done()
    todo = [q for q in questions if q.id not in done]
    judge_model = judge.config.model if judge is not None else None
    waiting = asyncio.Semaphore(2 * judge.config.concurrency if judge is not None else 1)
    tasks: set[asyncio.Task[None]] = set()

    def finish(row: dict[str, Any]) -> None:
        log.append(row)
        if on_row is not None:
            on_row(row)

    async def judged(q: EvalQuestion, result: RagAnswer, scores: MetricScores) -> None:
        try:
            sample = JudgeSample(
                question=q.question,
                answer=result.answer,
                contexts=[c.text for c in result.contexts],
                reference=q.reference,
            )
            assert judge is not None
            try:
                scores.merge(await judge.score(sample))
            except Exception as exc:  # judge.score records per-metric failures; this is anything else
                for name in JUDGE_METRICS:
                    scores.fail(name, error_text(exc))
            finish(answered_row(q, result, scores, judge_model))
        finally:
            waiting.release()

    for q in todo:
        try:
            result = await answer(q)
        except Exception as exc:  # recorded, retried on resume; the run goes on
            finish({**_base_row(q), "pipeline_error": error_text(exc), "finished_at": time.time()})
            continue
        scores = retrieval_scores([c.document_id for c in result.contexts], q.gold_document_ids)
        scores.merge(injection_scores(result.answer, q.canaries))
        scores.merge(
            citation_scores(
                [(c.document_id, c.title) for c in result.citations], q.gold_document_ids, gold_titles(q)
            )
        )
        grounded = (result.grounding or {}).get("score")
        scores.set("grounding", grounded, reason="not computed: the answer states no number, date or name")
        try:
            scores.merge(await scorer.score(result.answer, q.references))
        except Exception as exc:
            for name in ANSWER_METRICS:
                scores.fail(name, error_text(exc))
        if judge is None:
            for name in JUDGE_METRICS:
                scores.set(name, None, reason=NO_JUDGE)
            finish(answered_row(q, result, scores, None))
            continue
        await waiting.acquire()
        task = asyncio.create_task(judged(q, result, scores))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    wanted = {q.id for q in questions}
    rows = [row for qid, row in log.rows.items() if qid in wanted]
    return summarize(rows, run_info, planned=len(questions))


def summarize(
    rows: Sequence[dict[str, Any]], run_info: dict[str, Any], *, planned: int | None = None
) -> dict[str, Any]:
    """summary.json: per-metric mean, 95% bootstrap CI, how many computed / not computed / failed."""
    answered = [r for r in rows if not r.get("pipeline_error")]
    metrics: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = [r.get("scores", {}).get(name) for r in answered]
        estimate = bootstrap_mean(values)
        errors = sum(1 for r in answered if name in r.get("errors", {}))
        reasons = Counter(r["not_computed"][name] for r in answered if name in r.get("not_computed", {}))
        entry: dict[str, Any] = {
            **estimate.to_dict(),
            "errors": errors,
            "not_computed": sum(reasons.values()),
        }
        if estimate.mean is None:
            entry["note"] = (
                reasons.most_common(1)[0][0] if reasons else ("failed" if errors else "no answers")
            )
        metrics[name] = entry
    latencies = [float(r["latency_ms"]) for r in answered if "latency_ms" in r]
    capped = sum(1 for r in answered if r.get("finish_reason") == "length")
    return {
        "run": run_info,
        "questions": planned if planned is not None else len(rows),
        "answered": len(answered),
        "pipeline_errors": len(rows) - len(answered),
        "metrics": metrics,
        "latency_ms": {
            "mean": round(sum(latencies) / len(latencies), 2) if latencies else None,
            "p50": _round(percentile(latencies, 50)),
            "p95": _round(percentile(latencies, 95)),
        },
        "capped_answers": capped,
        "grounding_by_correctness": grounding_split(answered),
    }


def grounding_split(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean grounding of right and of wrong answers (string_presence 1 / 0): how well the judge-free
    check tells them apart."""
    out: dict[str, Any] = {}
    for label, wanted in (("right", 1.0), ("wrong", 0.0)):
        values = [
            r["scores"]["grounding"]
            for r in rows
            if r.get("scores", {}).get("string_presence") == wanted
            and r["scores"].get("grounding") is not None
        ]
        out[label] = round(sum(values) / len(values), 4) if values else None
        out[f"n_{label}"] = len(values)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary metrics as one flat object (the CLI's last line): metric -> mean (None if not computed)."""
    out: dict[str, Any] = {name: m["mean"] for name, m in summary["metrics"].items()}
    out["answered"] = summary["answered"]
    out["questions"] = summary["questions"]
    return out


def write_outputs(out_dir: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Path]:
    """summary.json and report.html for a run."""
    from evals.report import render_report

    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    report_path = out_dir / REPORT_FILE
    report_path.write_text(render_report(rows, summary), encoding="utf-8")
    return {"summary": summary_path, "report": report_path}


def compare_runs(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Per-metric paired deltas (b - a) with bootstrap CIs over the questions both runs scored.

    For a lower-is-better metric (`injection_obeyed`) `p_not_better` is the share of resamples whose
    delta is >= 0, and each entry says which way is better (`higher_is_better`)."""
    from evals.stats import paired_delta

    rows_a = {r["id"]: r for r in read_rows(run_a) if not r.get("pipeline_error")}
    rows_b = {r["id"]: r for r in read_rows(run_b) if not r.get("pipeline_error")}
    if not rows_a or not rows_b:
        empty = run_a if not rows_a else run_b
        raise ValueError(f"{empty} has no answered questions ({RESULTS_FILE} missing or empty)")
    deltas = []
    for name in METRIC_NAMES:
        a = {q: r.get("scores", {}).get(name) for q, r in rows_a.items()}
        b = {q: r.get("scores", {}).get(name) for q, r in rows_b.items()}
        better_up = name not in LOWER_IS_BETTER
        deltas.append(
            {**paired_delta(name, a, b, higher_is_better=better_up).to_dict(), "higher_is_better": better_up}
        )
    return {
        "run_a": _run_label(run_a),
        "run_b": _run_label(run_b),
        "questions_a": len(rows_a),
        "questions_b": len(rows_b),
        "paired_questions": len(set(rows_a) & set(rows_b)),
        "metrics": deltas,
    }


def _run_label(run_dir: Path) -> dict[str, Any]:
    info_path = Path(run_dir) / RUN_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    return {
        "dir": str(run_dir),
        "prompt": info.get("prompt"),
        "model": (info.get("llm") or {}).get("model"),
        "retrieval": info.get("retrieval"),
        "collection": info.get("collection"),
    }
