"""On a small labelled helpdesk set, hybrid retrieval beats both single modes.

Half the questions quote an exact error code (BM25 finds it; the dense model confuses near-identical
codes), half paraphrase a how-to with none of its words (dense finds it; BM25 cannot). Hybrid must
rank the right document well for both kinds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.container import Container
from app.settings import Settings
from evals.retrieval_eval import ranking_metrics
from ingest.types import Segment, SourceDocument

pytestmark = pytest.mark.integration

DOCS = {
    "err-e4021": "Error code E4021: the storage quota of the account is exceeded. Delete old files.",
    "err-e4012": "Error code E4012: the network cable is unplugged. Check the cable and the switch port.",
    "err-e4102": "Error code E4102: the printer tray is empty. Load paper into the tray and resume the job.",
    "err-e4201": "Error code E4201: the license has expired. Renew the subscription in the admin console.",
    "err-e4120": "Error code E4120: the certificate is not trusted. Install the company root certificate.",
    "err-e4210": "Error code E4210: the disk is failing. Back up your data and order a replacement drive.",
    "vpn": "Connecting from home: start the VPN client, sign in with your badge number and one-time code.",
    "password": "To reset a forgotten password, open the self-service portal and answer security questions.",
    "battery": "If a notebook battery drains quickly, lower the screen brightness and close background apps.",
    "coffee": "The kitchen on floor three has an espresso machine; descale it every Friday.",
    "rooms": "Book conference rooms in the calendar; large rooms need approval from facilities.",
    "expenses": "Submit travel receipts within thirty days through the finance tool to be reimbursed.",
}

QUERIES = {
    # Exact codes: lexical match wins.
    "code-1": ("E4102", "err-e4102"),
    "code-2": ("E4201", "err-e4201"),
    "code-3": ("E4120", "err-e4120"),
    "code-4": ("E4012", "err-e4012"),
    "code-5": ("E4210", "err-e4210"),
    "code-6": ("E4021", "err-e4021"),
    # Paraphrases sharing no term with their document: semantic match wins.
    "para-1": ("I can't remember my login secret", "password"),
    "para-2": ("my portable computer loses charge fast", "battery"),
    "para-3": ("where can I get a caffeinated drink at the workplace", "coffee"),
    "para-4": ("reserve a venue for a team gathering", "rooms"),
    "para-5": ("reach internal systems while at my house", "vpn"),
    "para-6": ("getting money returned after a business trip", "expenses"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[str]]]:
    container = Container(Settings(data_dir=Path(tmp_path_factory.mktemp("hybrid"))))
    docs = [
        SourceDocument(doc_id=i, source=f"{i}.txt", title="", segments=[Segment(t)]) for i, t in DOCS.items()
    ]
    container.pipeline.ingest(docs, "helpdesk")
    variants = {
        "dense": ("dense", container.retriever),
        "bm25": ("bm25", container.retriever),
        "hybrid": ("hybrid", container.retriever),  # the default fusion
        "hybrid-rrf": ("hybrid", container.retriever.with_fusion(method="rrf")),
        "hybrid-convex": ("hybrid", container.retriever.with_fusion(method="convex")),
    }
    return {
        name: {
            qid: [d.doc_id for d in retriever.retrieve_documents("helpdesk", text, top_k=10, mode=mode)]
            for qid, (text, _) in QUERIES.items()
        }
        for name, (mode, retriever) in variants.items()
    }


@pytest.mark.parametrize("hybrid", ["hybrid", "hybrid-rrf", "hybrid-convex"])
def test_hybrid_beats_dense_and_bm25(runs: dict[str, dict[str, list[str]]], hybrid: str) -> None:
    qrels = {qid: {doc_id: 1} for qid, (_, doc_id) in QUERIES.items()}
    scores = {mode: ranking_metrics(qrels, run) for mode, run in runs.items()}
    for metric in ("ndcg@10", "mrr@10"):
        assert scores[hybrid][metric] > scores["dense"][metric], (metric, scores)
        assert scores[hybrid][metric] > scores["bm25"][metric], (metric, scores)


def test_each_single_mode_misses_what_the_other_finds(runs: dict[str, dict[str, list[str]]]) -> None:
    def top1(mode: str, prefix: str) -> int:
        return sum(runs[mode][q][:1] == [d] for q, (_, d) in QUERIES.items() if q.startswith(prefix))

    assert top1("bm25", "code") == 6 and top1("bm25", "para") == 0
    assert top1("dense", "para") > top1("dense", "code")
    assert top1("hybrid", "code") == 6 and top1("hybrid", "para") == top1("dense", "para")


def test_eval_retrieval_cli_scores_every_mode_and_reuses_its_collection(tmp_path: Path) -> None:
    """`ragserver eval retrieval` on this set written as a BEIR dataset: the last line is the JSON summary."""
    import json

    from typer.testing import CliRunner

    from app.cli.main import app

    data = tmp_path / "helpdesk"
    data.mkdir()
    corpus = data / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS.items()))
    (data / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items())
        + json.dumps({"_id": "unjudged", "text": "not in the qrels"})
        + "\n"
    )
    (data / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items())
    )
    args = ["eval", "retrieval", "--corpus", str(corpus), "--queries", str(data / "queries.jsonl")]
    args += ["--qrels", str(data / "qrels.tsv"), "--top-k", "10"]
    env = {"RAGSERVER_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()

    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(summary) == {"dense", "bm25", "hybrid"}
    for figures in summary.values():
        assert set(figures) == {"ndcg@10", "recall@100", "mrr@10", "p50_ms", "p99_ms"}
    assert summary["hybrid"]["ndcg@10"] > max(summary["dense"]["ndcg@10"], summary["bm25"]["ndcg@10"])
    assert "12 judged queries, collection eval-helpdesk" in first.stdout

    again = runner.invoke(app, [*args, "--mode", "bm25", "--limit-queries", "6"], env=env)
    assert again.exit_code == 0, again.output
    assert '"reused": true' in again.stderr
    assert set(json.loads(again.stdout.strip().splitlines()[-1])) == {"bm25"}

    bad = runner.invoke(app, [*args, "--mode", "sparse"], env=env)
    assert bad.exit_code == 2 and "unknown mode" in bad.stderr
