"""The judge path of `eval rag`: ragas's own metric classes, through llm_factory and the real openai client,
against a scripted OpenAI-compatible judge on loopback whose verdicts follow fixed rules, so per-question
scores and the run's aggregates come out to known numbers. Also: no judge, resume, bounded concurrency.

The answering side is a hand-written ChatService fake (the real pipeline runs in the integration test).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.devtools.scripted_llm import ScriptedOpenAIServer
from app.evaluation.rag_run import run_chat_eval
from app.services.chat_service import ChatQuery, ChatResult, Citation
from evals.answer_metrics import AnswerScorer, local_ragas_embeddings
from evals.datasets import EvalQuestion, load_questions
from evals.judge import JudgeConfig, RagasJudge, bounded_llm
from evals.rag_eval import RESULTS_FILE, RunMismatch, read_rows, summarize
from evals.rag_metrics import JUDGE_METRICS, NO_JUDGE
from ingest.embedder import hashed_embedding

pytestmark = pytest.mark.unit

# id -> question, answer, [(document id, context text)], references, gold document ids
CASES: dict[str, tuple[str, str, list[tuple[str, str]], list[str], list[str]]] = {
    "q1": (
        "Where is Paris?",
        "Paris is in France [1]. Paris has the Louvre.",
        [("doc-paris", "paris is in france and is its capital."), ("doc-berlin", "berlin is in germany.")],
        ["Paris is in France."],
        ["doc-paris"],
    ),
    "q2": (
        "Who wrote Hamlet?",
        "I don't know.",
        [("doc-berlin", "berlin is in germany."), ("doc-hamlet", "shakespeare wrote hamlet.")],
        ["Shakespeare wrote Hamlet. He was English."],
        ["doc-hamlet"],
    ),
    "q3": ("Why does BOOM explode?", "BOOM goes the judge.", [("doc-x", "x.")], ["x"], []),
    "q4": (
        "Where is Berlin?",
        "Berlin is in Germany.",
        [("doc-berlin", "berlin is in germany.")],
        [],
        ["doc-y"],
    ),
}
QUESTION_FOR_ANSWER = {answer: question for question, answer, *_ in CASES.values()}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", re.sub(r"\s*\[\d+\]", "", text)) if s.strip()]


def _bare(text: str) -> str:
    return text.lower().rstrip(".")


def scripted_verdicts(messages: list[dict[str, Any]]) -> str:
    """A deterministic judge: reads the JSON input ragas puts at the end of each prompt and applies a rule."""
    # The first user message is ragas's prompt; instructor appends its re-ask after a reply it cannot parse.
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    if "BOOM" in prompt:
        return "this is not JSON"
    data = json.loads(prompt.rsplit("input: ", 1)[1].rsplit("Output:", 1)[0])
    if "Break down each sentence" in prompt:  # Faithfulness, step 1: one statement per sentence
        return json.dumps({"statements": [s.rstrip(".") for s in _sentences(data["answer"])]})
    if "judge the faithfulness" in prompt:  # step 2: supported iff it occurs in the context
        context = data["context"].lower()
        verdicts = [
            {"statement": s, "reason": "r", "verdict": int(_bare(s) in context)} for s in data["statements"]
        ]
        return json.dumps({"statements": verdicts})
    if "Generate a question for the given answer" in prompt:  # ResponseRelevancy
        response = data["response"]
        noncommittal = int("don't know" in response)
        return json.dumps(
            {"question": QUESTION_FOR_ANSWER.get(response, response), "noncommittal": noncommittal}
        )
    if "verify if the context was useful" in prompt:  # ContextPrecision: the reference's first sentence
        useful = _bare(_sentences(data["answer"])[0]) in data["context"].lower()
        return json.dumps({"reason": "r", "verdict": int(useful)})
    if "classify if the statement can be attributed" in prompt:  # ContextRecall: per reference sentence
        context = data["context"].lower()
        rows = [
            {"statement": s, "reason": "r", "attributed": int(_bare(s) in context)}
            for s in _sentences(data["answer"])
        ]
        return json.dumps({"classifications": rows})
    raise AssertionError(f"unexpected judge prompt: {prompt[:200]}")


class HashEmbedder:
    """Deterministic bag-of-words vectors (the scripted server's), standing in for the local model."""

    dim = 64

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray([hashed_embedding(t, self.dim) for t in texts], dtype=np.float32)


class FakeChat:
    """ChatService.chat with canned answers and contexts; records what it was asked."""

    def __init__(self) -> None:
        self.queries: list[ChatQuery] = []

    async def chat(self, query: ChatQuery, **_: Any) -> ChatResult:
        self.queries.append(query)
        qid = next(k for k, case in CASES.items() if case[0] == query.message)
        _, answer, contexts, _, _ = CASES[qid]
        sources = [
            Citation(
                n=i, document_id=doc, source=doc, chunk_id=f"{doc}#0", score=1.0 / i, text=text, title=doc
            )
            for i, (doc, text) in enumerate(contexts, start=1)
        ]
        return ChatResult(
            conversation_id="c",
            response_id="r",
            answer=answer,
            citations=sources[:1],
            prompt=query.prompt or "",
            model="fake-model",
            usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            collection=query.collection or "",
            retrieval={"mode": query.mode, "top_k": query.top_k},
            query=query.message,
            contexts=sources,
            latency_ms=10.0,
        )


def questions() -> list[EvalQuestion]:
    return [EvalQuestion(qid, q, refs, [], gold) for qid, (q, _, _, refs, gold) in CASES.items()]


RUN_INFO = {
    "questions_path": "cases.jsonl",
    "collection": "c",
    "prompt": "answer@v1",
    "llm": {"model": "fake-model"},
    "retrieval": {"mode": "dense", "top_k": 2},
    "max_tokens": 32,
    "temperature": 0.0,
    "judge": None,
}


@pytest.fixture
def judge_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(scripted_verdicts, model="judge-model") as server:
        yield server


@pytest.fixture
def embeddings() -> Any:
    return local_ragas_embeddings(HashEmbedder())


async def test_judge_metrics_aggregate_to_known_numbers(
    judge_server: ScriptedOpenAIServer, embeddings: Any, tmp_path: Path
) -> None:
    config = JudgeConfig(judge_server.base_url, "judge-model", concurrency=3, max_retries=0)
    judge = RagasJudge(config, embeddings)
    chat = FakeChat()
    info = {**RUN_INFO, "judge": config.describe()}
    try:
        summary = await run_chat_eval(chat, questions(), tmp_path, info, AnswerScorer(embeddings), judge)  # type: ignore[arg-type]
    finally:
        await judge.aclose()

    assert all(q.remember is False for q in chat.queries)
    rows = {r["id"]: r for r in read_rows(tmp_path)}
    assert set(rows) == set(CASES)
    s1, s2, s3, s4 = (rows[q]["scores"] for q in ("q1", "q2", "q3", "q4"))
    # q1: "Paris is in France" supported, "Paris has the Louvre" not; the generated question is the question;
    # the useful context is ranked first; the one reference sentence is in the contexts.
    assert s1["faithfulness"] == 0.5
    assert s1["answer_relevancy"] == pytest.approx(1.0)
    assert s1["context_precision"] == pytest.approx(1.0)
    assert s1["context_recall"] == 1.0
    # q2: "I don't know" is unsupported and noncommittal; the useful context is second;
    # 1 of the 2 reference sentences is found.
    assert s2["faithfulness"] == 0.0
    assert s2["answer_relevancy"] == 0.0
    assert s2["context_precision"] == pytest.approx(0.5)
    assert s2["context_recall"] == 0.5
    # q3: the judge answers garbage: every judge metric is a recorded error, not a score.
    assert all(s3[m] is None for m in JUDGE_METRICS)
    assert set(rows["q3"]["errors"]) == set(JUDGE_METRICS)
    assert all(rows["q3"]["errors"][m] for m in JUDGE_METRICS)
    assert s3["token_f1"] is not None  # the other metrics still ran
    # q4: no reference answer: the reference-based metrics are not computed.
    assert s4["faithfulness"] == 1.0 and s4["answer_relevancy"] == pytest.approx(1.0)
    assert (
        s4["context_precision"] is None and "no reference" in rows["q4"]["not_computed"]["context_precision"]
    )

    m = summary["metrics"]
    assert (m["faithfulness"]["mean"], m["faithfulness"]["n"], m["faithfulness"]["errors"]) == (0.5, 3, 1)
    assert m["answer_relevancy"]["mean"] == pytest.approx(2 / 3, abs=1e-5)
    assert (m["context_precision"]["mean"], m["context_precision"]["n"]) == (pytest.approx(0.75), 2)
    assert m["context_precision"]["not_computed"] == 1 and m["context_precision"]["errors"] == 1
    assert (m["context_recall"]["mean"], m["context_recall"]["n"]) == (0.75, 2)
    # Retrieval: gold at document rank 1 (q1), rank 2 (q2), missing (q4); q3 names no gold document.
    assert (m["hit_rate"]["mean"], m["hit_rate"]["n"]) == (pytest.approx(2 / 3, abs=1e-6), 3)
    assert m["mrr"]["mean"] == pytest.approx(0.5)
    # Answers vs references: q1 contains its reference ("[1]" stripped), with token F1 8/11.
    assert s1["string_presence"] == 1.0 and s1["exact_match"] == 0.0
    assert s1["token_f1"] == pytest.approx(8 / 11, abs=1e-6)
    assert s4["token_f1"] is None and "no reference" in rows["q4"]["not_computed"]["token_f1"]

    # Every row records what produced it.
    r1 = rows["q1"]
    assert (r1["prompt"], r1["model"], r1["judge_model"]) == ("answer@v1", "fake-model", "judge-model")
    assert r1["retrieval"] == {"mode": "dense", "top_k": 2}
    assert [c["document_id"] for c in r1["contexts"]] == ["doc-paris", "doc-berlin"]
    assert r1["citations"] == [
        {"n": 1, "document_id": "doc-paris", "chunk_id": "doc-paris#0", "title": "doc-paris"}
    ]
    assert r1["scores"]["citation_precision"] == 1.0 and r1["scores"]["citation_recall"] == 1.0
    assert r1["latency_ms"] == 10.0


async def test_without_a_judge_the_judge_metrics_are_not_computed(embeddings: Any, tmp_path: Path) -> None:
    summary = await run_chat_eval(FakeChat(), questions(), tmp_path, RUN_INFO, AnswerScorer(embeddings))  # type: ignore[arg-type]
    for name in JUDGE_METRICS:
        assert summary["metrics"][name]["mean"] is None
        assert summary["metrics"][name]["note"] == NO_JUDGE
    row = read_rows(tmp_path)[0]
    assert row["scores"]["faithfulness"] is None and row["not_computed"]["faithfulness"] == NO_JUDGE
    assert summary["metrics"]["mrr"]["mean"] == pytest.approx(0.5)


async def test_a_killed_run_resumes_where_it_stopped(embeddings: Any, tmp_path: Path) -> None:
    scorer = AnswerScorer(embeddings)
    first = FakeChat()
    await run_chat_eval(first, questions()[:2], tmp_path, RUN_INFO, scorer)  # type: ignore[arg-type]
    # A kill mid-write leaves half a line: it is dropped and that question runs again.
    with (tmp_path / RESULTS_FILE).open("a") as fh:
        fh.write('{"id": "q3", "question": "Why')
    second = FakeChat()
    summary = await run_chat_eval(second, questions(), tmp_path, RUN_INFO, scorer)  # type: ignore[arg-type]
    assert [q.message for q in second.queries] == [CASES["q3"][0], CASES["q4"][0]]
    assert summary["answered"] == 4
    assert sorted(r["id"] for r in read_rows(tmp_path)) == ["q1", "q2", "q3", "q4"]
    assert summarize(read_rows(tmp_path), RUN_INFO)["metrics"] == summary["metrics"]

    with pytest.raises(RunMismatch, match="prompt"):
        await run_chat_eval(FakeChat(), questions(), tmp_path, {**RUN_INFO, "prompt": "answer@v2"}, scorer)  # type: ignore[arg-type]


async def test_pipeline_failures_are_recorded_and_retried(embeddings: Any, tmp_path: Path) -> None:
    class Broken(FakeChat):
        async def chat(self, query: ChatQuery, **_: Any) -> ChatResult:
            if "Hamlet" in query.message:
                raise RuntimeError("llm down")
            return await super().chat(query, **_)

    summary = await run_chat_eval(Broken(), questions(), tmp_path, RUN_INFO, AnswerScorer(embeddings))  # type: ignore[arg-type]
    assert (summary["answered"], summary["pipeline_errors"]) == (3, 1)
    assert {r["id"]: r.get("pipeline_error") for r in read_rows(tmp_path)}["q2"] == "RuntimeError: llm down"
    retry = FakeChat()
    summary = await run_chat_eval(retry, questions(), tmp_path, RUN_INFO, AnswerScorer(embeddings))  # type: ignore[arg-type]
    assert [q.message for q in retry.queries] == ["Who wrote Hamlet?"]
    assert (summary["answered"], summary["pipeline_errors"]) == (4, 0)


async def test_judge_calls_are_bounded_by_the_semaphore() -> None:
    active = peak = 0

    class SlowLLM:
        model = "slow"

        async def agenerate(self, prompt: str, response_model: Any) -> Any:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return prompt

    llm = bounded_llm(SlowLLM(), asyncio.Semaphore(2))
    assert await asyncio.gather(*(llm.agenerate(str(i), object) for i in range(10))) == [
        str(i) for i in range(10)
    ]
    assert peak == 2


def test_datasets_cmu_qa_and_generic_rows(tmp_path: Path) -> None:
    cmu = tmp_path / "cmu.jsonl"
    cmu.write_text(
        json.dumps(
            {
                "id": "c1",
                "question": "Is it?",
                "answers": ["yes", "Yes.", "yes"],
                "article_id": "a/b.txt",
                "set": "S08",
            }
        )
        + "\n\n"
        + json.dumps({"id": "c2", "question": "And?", "answers": [], "article_id": "a/c.txt"})
        + "\n"
    )
    first, second = load_questions(cmu)
    assert (first.id, first.references, first.gold_document_ids, first.metadata) == (
        "c1",
        ["yes", "Yes."],
        ["a/b.txt"],
        {"set": "S08"},
    )
    assert second.reference is None
    assert [q.id for q in load_questions(cmu, limit=1)] == ["c1"]

    generic = tmp_path / "g.jsonl"
    generic.write_text(
        json.dumps(
            {"question": "Q?", "reference": "R", "reference_contexts": ["ctx"], "gold_document_id": "d1"}
        )
        + "\n"
        + json.dumps({"question": "Only a question"})
        + "\n"
    )
    g1, g2 = load_questions(generic)
    assert (g1.id, g1.references, g1.reference_contexts, g1.gold_document_ids) == (
        "line-000001",
        ["R"],
        ["ctx"],
        ["d1"],
    )
    assert (g2.id, g2.references, g2.gold_document_ids) == ("line-000002", [], [])


async def test_compare_reports_paired_deltas_and_writes_html(embeddings: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli.main import app

    class Worse(FakeChat):
        async def chat(self, query: ChatQuery, **_: Any) -> ChatResult:
            result = await super().chat(query, **_)
            if query.message == CASES["q1"][0]:
                result.answer = "I don't know."
            return result

    scorer = AnswerScorer(embeddings)
    await run_chat_eval(FakeChat(), questions(), tmp_path / "a", RUN_INFO, scorer)  # type: ignore[arg-type]
    await run_chat_eval(Worse(), questions(), tmp_path / "b", {**RUN_INFO, "prompt": "answer@v2"}, scorer)  # type: ignore[arg-type]

    result = CliRunner().invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    deltas = json.loads(result.stdout.strip().splitlines()[-1])
    # q1 lost its reference ("Paris is in France" no longer in the answer); q2 and q3 unchanged; q4 has none.
    assert deltas["string_presence"]["n"] == 3
    assert deltas["string_presence"]["delta"] == pytest.approx(-1 / 3, abs=1e-6)
    assert deltas["hit_rate"] == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 3}
    assert deltas["faithfulness"]["n"] == 0
    html = (tmp_path / "b" / "compare-vs-a.html").read_text()
    assert "answer@v1" in html and "answer@v2" in html and "Largest drops in answer_similarity" in html
