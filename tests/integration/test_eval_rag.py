"""`ragserver eval rag` for real: the packaged embedder, embedded Chroma, the local SmolLM2 model and the real
chat pipeline over 10 CMU QA questions (a tiny corpus of their gold articles plus two others), then
`eval compare` between an answer@v1 run and an answer@v2 run scored by the scripted judge.

Kept small for two shared CPU cores: the 5 shortest gold articles, 2 chunks per answer, 24 new tokens, and
the answer@v2 run on the first 5 questions only.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.main import app
from app.devtools.scripted_llm import ScriptedOpenAIServer
from evals.rag_metrics import JUDGE_METRICS, METRIC_NAMES, NO_CANARY, NO_JUDGE
from tests.unit.test_eval_judge import scripted_verdicts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CMU_QA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cmu-qa"
OPTIONS = ["--max-tokens", "24", "--top-k", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """10 questions (2 from each of the 5 shortest articles that have questions) and a corpus of those
    articles plus the two shortest articles no question is about."""
    if not (CMU_QA / "questions-dev.jsonl").is_file():
        pytest.skip(f"CMU QA not found at {CMU_QA}")
    articles = {a["_id"]: a for a in map(json.loads, (CMU_QA / "articles.jsonl").open())}
    by_article: dict[str, list[dict]] = defaultdict(list)
    for q in map(json.loads, (CMU_QA / "questions-dev.jsonl").open()):
        by_article[q["article_id"]].append(q)
    shortest = sorted(by_article, key=lambda a: (len(articles[a]["text"]), a))[:5]
    others = sorted(set(articles) - set(by_article), key=lambda a: (len(articles[a]["text"]), a))[:2]
    picked = sorted((q for a in shortest for q in by_article[a][:2]), key=lambda q: q["id"])
    root = tmp_path_factory.mktemp("cmuqa")
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in picked))
    corpus = root / "cmuqa-tiny.jsonl"
    corpus.write_text("".join(json.dumps(articles[a]) + "\n" for a in [*shortest, *others]))
    return questions, corpus


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_eval_rag_runs_the_pipeline_and_compare_judges_two_runs(
    dataset: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions, corpus = dataset
    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    run_a, run_b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"

    a = runner.invoke(
        app,
        [
            "eval",
            "rag",
            "--questions",
            str(questions),
            "--corpus",
            str(corpus),
            "--prompt",
            "answer@v1",
            "--out",
            str(run_a),
            *OPTIONS,
        ],
    )
    assert a.exit_code == 0, a.output
    head = _last_json(a.stdout)
    assert head["answered"] == head["questions"] == 10
    assert 0.0 <= head["hit_rate"] <= 1.0 and 0.0 <= head["mrr"] <= head["hit_rate"]
    assert 0.0 < head["answer_similarity"] <= 1.0
    assert all(head[m] is None for m in JUDGE_METRICS)  # no judge: not computed, never invented
    assert head["injection_obeyed"] is None  # CMU QA carries no canaries: not an injection probe

    rows = [json.loads(line) for line in (run_a / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    for row in rows:
        assert row["prompt"] == "answer@v1" and row["model"] == "SmolLM2-135M-Instruct"
        assert row["retrieval"]["top_k"] == 2 and row["retrieval"]["mode"] == "hybrid"
        assert row["collection"] == "eval-cmuqa-tiny"
        assert 1 <= len(row["contexts"]) <= 2 and all(c["text"] for c in row["contexts"])
        # Citations are what the answer used (possibly nothing), always among the contexts.
        assert {c["chunk_id"] for c in row["citations"]} <= {c["chunk_id"] for c in row["contexts"]}
        assert row["scores"]["cited_nothing"] == (0.0 if row["citations"] else 1.0) and row["latency_ms"] > 0
        assert row["finish_reason"] in ("stop", "length")
        assert row["usage"]["completion_tokens"] <= 24
        assert set(row["scores"]) == set(METRIC_NAMES)
        assert row["not_computed"]["faithfulness"] == NO_JUDGE
    summary = json.loads((run_a / "summary.json").read_text())
    assert summary["metrics"]["hit_rate"]["n"] == 10
    assert summary["metrics"]["faithfulness"]["note"] == NO_JUDGE
    assert summary["metrics"]["injection_obeyed"]["note"] == NO_CANARY
    report = (run_a / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 2
    assert "<script" not in report and 'src="http' not in report and 'href="http' not in report

    # Run B also has a judge: the scripted one of the unit tests, on loopback, through the CLI options.
    with ScriptedOpenAIServer(scripted_verdicts, model="judge-model") as judge:
        b = runner.invoke(
            app,
            [
                "eval",
                "rag",
                "--questions",
                str(questions),
                "--collection",
                "eval-cmuqa-tiny",
                "--prompt",
                "answer@v2",
                "--out",
                str(run_b),
                "--limit",
                "5",
                "--judge-url",
                judge.base_url,
                "--judge-model",
                "judge-model",
                *OPTIONS,
            ],
        )
        judge_calls = len(judge.requests)
    assert b.exit_code == 0, b.output
    rows_b = [json.loads(line) for line in (run_b / "results.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in rows_b} == {"answer@v2"} and {r["judge_model"] for r in rows_b} == {
        "judge-model"
    }
    assert judge_calls >= 5 * 4
    for row in rows_b:  # each judge metric is a score, or a recorded reason / error: never silently missing
        for m in JUDGE_METRICS:
            assert (row["scores"][m] is not None) + (m in row["errors"]) + (m in row["not_computed"]) == 1
    head_b = _last_json(b.stdout)
    assert head_b["faithfulness"] is not None and 0.0 <= head_b["faithfulness"] <= 1.0

    c = runner.invoke(app, ["eval", "compare", str(run_a), str(run_b)])
    assert c.exit_code == 0, c.output
    deltas = _last_json(c.stdout)
    # Same questions, same retrieval: only the prompt changed, so the retrieval deltas are exactly zero.
    assert deltas["hit_rate"] == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 5}
    assert deltas["answer_similarity"]["n"] == 5
    assert deltas["faithfulness"]["n"] == 0
    html = (run_b / f"compare-vs-{run_a.name}.html").read_text()
    assert "answer@v1" in html and "answer@v2" in html and "data:image/png;base64," in html
