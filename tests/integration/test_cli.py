"""The `ragserver` CLI as a user runs it: ingest, search, docs, stats, prune, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.main import app
from tests.samples import make_corpus_folder

pytestmark = pytest.mark.integration


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, embedder):
    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(tmp_path / "data"))
    # Reuse the session's loaded model instead of loading it per command.
    monkeypatch.setattr("ingest.embedder.SentenceTransformerEmbedder", lambda *a, **k: embedder)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_cli_round_trip(run, tmp_path: Path) -> None:
    files = make_corpus_folder(tmp_path / "corpus")
    (tmp_path / "corpus" / "broken.pdf").write_bytes(b"%PDF-1.4 broken")

    first = run("ingest", str(tmp_path / "corpus"), "--collection", "kb", "--metadata", '{"team": "docs"}')
    assert first.exit_code == 1  # one file failed, the rest ingested
    report = last_json(first.stdout)
    assert report["added"] == 5 and report["failed"][0]["source"].endswith("broken.pdf")

    (tmp_path / "corpus" / "broken.pdf").unlink()
    again = run("ingest", str(tmp_path / "corpus"), "--collection", "kb", "--metadata", '{"team": "docs"}')
    assert again.exit_code == 0 and last_json(again.stdout)["skipped"] == 5

    stats = run("stats", "--collection", "kb")
    assert last_json(stats.stdout)["documents"] == 5

    found = run(
        "search", "where do emperor penguins breed", "-c", "kb", "-k", "2", "--json", "--mode", "dense"
    )
    hits = json.loads(found.stdout)
    assert hits[0]["source"] == str(files["html"].resolve()) and len(hits) == 2

    listed = [json.loads(line) for line in run("docs", "list", "-c", "kb").stdout.splitlines()]
    assert len(listed) == 5 and all(d["metadata"]["team"] == "docs" for d in listed)

    files["txt"].unlink()
    pruned = run("ingest", str(tmp_path / "corpus"), "-c", "kb", "--metadata", '{"team": "docs"}', "--prune")
    assert last_json(pruned.stdout)["deleted"] == 1
    assert last_json(run("stats", "-c", "kb").stdout)["documents"] == 4

    remaining = [
        json.loads(line)["document_id"] for line in run("docs", "list", "-c", "kb").stdout.splitlines()
    ]
    assert run("docs", "delete", remaining[0], "-c", "kb").exit_code == 0
    assert last_json(run("stats", "-c", "kb").stdout)["documents"] == 3
    partly = run("docs", "delete", remaining[1], "no-such-doc", "-c", "kb")
    assert partly.exit_code == 1 and last_json(partly.stdout) == {
        "deleted": 1,
        "requested": 2,
        "not_found": ["no-such-doc"],
    }
    # Through the service the API's DELETE uses: each document audited as it is there.
    audited = [json.loads(line) for line in run("audit", "--action", "document.delete").stdout.splitlines()]
    assert [(e["object_id"], e["outcome"], e["actor"], e["collection"]) for e in audited] == [
        ("no-such-doc", "error", "cli", "kb"),
        (remaining[1], "ok", "cli", "kb"),
        (remaining[0], "ok", "cli", "kb"),
    ]


def test_cli_errors(run, tmp_path: Path) -> None:
    missing = run("stats", "--collection", "nope")
    assert missing.exit_code == 2 and "not found" in missing.stderr
    bad_name = run("ingest", str(tmp_path), "--collection", "no spaces!")
    assert bad_name.exit_code == 2 and "invalid collection name" in bad_name.stderr
    no_path = run("ingest", str(tmp_path / "absent"))
    assert no_path.exit_code == 2 and "no such file" in no_path.stderr
    (tmp_path / "a.txt").write_text("some text")
    assert run("ingest", str(tmp_path / "a.txt"), "-c", "kb").exit_code == 0
    bad_mode = run("search", "x", "-c", "kb", "--mode", "psychic")
    assert bad_mode.exit_code == 2 and "unknown retrieval mode" in bad_mode.stderr
    bad_filter = run("search", "x", "-c", "kb", "--filter", '{"ingested_at": {"around": 1}}')
    assert bad_filter.exit_code == 2 and "error:" in bad_filter.stderr
    bad_json = run("ingest", str(tmp_path), "--metadata", "{oops")
    assert bad_json.exit_code == 2 and "not valid JSON" in bad_json.stderr


def test_bench_queries_compares_torch_and_onnx(run, tmp_path: Path) -> None:
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"_id": str(i), "text": f"question {i} about cells"}) + "\n" for i in range(4))
    )
    result = run("bench", "queries", "--queries", str(queries), "--threads", "1")
    assert result.exit_code == 0, result.output
    figures = last_json(result.stdout)
    assert figures["queries"] == 4
    assert figures["torch_p50_ms_1t"] > 0 and figures["onnx_p50_ms_1t"] > 0
    assert figures["max_abs_diff"] < 1e-4
    assert run("bench", "queries", "--queries", str(queries), "--threads", "two").exit_code == 2


def test_bench_scale_prints_each_size(run, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"_id": str(i), "title": f"T{i}", "text": f"cells divide {i} times"}) + "\n"
            for i in range(50)
        )
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"_id": str(i), "text": f"how often do cells divide {i}"}) + "\n" for i in range(30)
        )
    )
    args = ["bench", "scale", "--corpus", str(corpus), "--queries", str(queries), "--requests", "20"]
    result = run(*args, "--sizes", "300", "--work-dir", str(tmp_path / "scale"))
    assert result.exit_code == 0, result.output
    (row,) = last_json(result.stdout)["sizes"]
    assert row["chunks"] == 300 and row["write_chunks_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert row["restart_s"] > 0 and row["new_replica_s"] > 0
    assert row["hybrid_c1"]["p99_ms"] >= row["hybrid_c1"]["p50_ms"] > 0
    assert row["hybrid_c16"]["qps"] > 0
    assert run(*args, "--sizes", "ten").exit_code == 2


def test_bench_ingest_through_onnx_reports_the_difference(run, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"_id": str(i), "title": f"T{i}", "text": f"Cells divide {i} times a day. " * 20})
            + "\n"
            for i in range(6)
        )
    )
    result = run("bench", "ingest", "--corpus", str(corpus), "--backend", "onnx")
    assert result.exit_code == 0, result.output
    figures = last_json(result.stdout)
    assert figures["backend"] == "onnx" and figures["chunks"] >= 6
    assert figures["max_abs_diff"] < 1e-4 and figures["efficiency"] > 0
    assert run("bench", "ingest", "--corpus", str(corpus), "--backend", "tpu").exit_code == 2


def test_tune_retrieval_ranks_a_space_and_prints_the_best_as_env(run, tmp_path: Path) -> None:
    topics = [
        "volcano lava eruption",
        "penguin antarctic breeding",
        "chess opening gambit",
        "bread yeast dough",
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps(
                {"_id": f"d{i}", "title": f"Doc {i}", "text": f"All about {topics[i % 4]} number {i}."}
            )
            + "\n"
            for i in range(12)
        )
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": f"q{t}", "text": topics[t]}) + "\n" for t in range(4)))
    qrels = tmp_path / "dev.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{t}\td{t}\t1\n" for t in range(4)))
    space = tmp_path / "space.yaml"
    space.write_text("fusion: [convex, rrf]\nbm25_k1: [1.2, 0.9]\nchunk_size: 128\n")
    args = ["tune", "retrieval", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels)]
    result = run(*args, "--space", str(space))
    assert result.exit_code == 0, result.output
    out = last_json(result.stdout)
    assert out["evaluated"] == 4 and out["queries"] == 4 and out["skipped"] == 0
    scores = [r["ndcg@10"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True) and out["best"] == out["results"][0]["settings"]
    assert {r["settings"]["fusion"] for r in out["results"]} == {"convex", "rrf"}
    assert {r["settings"]["chunk_size"] for r in out["results"]} == {128}
    assert f"RAGSERVER_RETRIEVAL__FUSION={out['best']['fusion']}" in result.stdout
    again = run(*args, "--space", str(space), "--budget", "1")  # the collection is reused; budget stops early
    assert again.exit_code == 0 and last_json(again.stdout)["evaluated"] >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: [red]\n")
    refused = run(*args, "--space", str(bad))
    assert refused.exit_code == 2 and "unknown settings colour" in refused.output


def test_collections_rebuild_rollback_prune_on_the_data_dir(run, tmp_path: Path) -> None:
    make_corpus_folder(tmp_path / "corpus")
    (tmp_path / "corpus" / "long.txt").write_text(
        " ".join(f"Sentence {i} of a long report on glaciers retreating in the Alps." for i in range(60))
    )
    assert run("ingest", str(tmp_path / "corpus"), "--collection", "kb").exit_code in (0, 1)
    before = last_json(run("stats", "--collection", "kb").stdout)
    assert before["version"] == "v1"

    rebuilt = run("collections", "rebuild", "kb", "--chunk-size", "64", "--chunk-overlap", "8")
    assert rebuilt.exit_code == 0, rebuilt.output
    row = last_json(rebuilt.stdout)
    assert row["label"] == "v2" and row["state"] == "ready" and row["documents"] == before["documents"]
    after = last_json(run("stats", "--collection", "kb").stdout)
    assert after["version"] == "v2" and after["chunks"] > before["chunks"]  # smaller chunks
    found = run("search", "volcano", "--collection", "kb", "--json")
    assert found.exit_code == 0 and found.stdout.strip()

    listing = run("collections", "versions", "kb")
    assert "* v2" in listing.stdout and last_json(listing.stdout)["active"] == "v2"
    back = run("collections", "rollback", "kb")
    assert back.exit_code == 0 and last_json(back.stdout)["label"] == "v1"
    assert last_json(run("stats", "--collection", "kb").stdout)["version"] == "v1"
    pruned = run("collections", "prune", "kb")
    assert last_json(pruned.stdout)["pruned"] == ["v2"]
    again = run("collections", "rollback", "kb")
    assert again.exit_code == 2 and "no earlier ready version" in again.output
    missing = run("collections", "rebuild", "nope")
    assert missing.exit_code == 2 and "not found" in missing.output
    bad = run("collections", "rebuild", "kb", "--chunk-size", "32", "--chunk-overlap", "32")
    assert bad.exit_code == 2 and "smaller" in bad.output
    # A model outside <data_dir>/models (the default collections.model_roots) is refused here too.
    outside = run("collections", "rebuild", "kb", "--embedding-model", str(tmp_path / "corpus"))
    assert outside.exit_code == 2 and "collections.model_roots" in outside.output


def test_eval_answerability_refuses_a_missing_file_before_answering_anything(run, tmp_path: Path) -> None:
    labelled = Path(__file__).resolve().parents[2] / "evals" / "data" / "answerability" / "cmu-qa-dev.jsonl"
    corpus = tmp_path / "articles.jsonl"
    corpus.write_text(json.dumps({"_id": "a", "title": "T", "text": "x"}) + "\n")
    out = tmp_path / "run"
    for args in (
        ["--set", str(tmp_path / "nope.jsonl"), "--corpus", str(corpus)],
        ["--set", str(labelled), "--corpus", str(corpus), "--pool", str(tmp_path / "no-pool.jsonl")],
    ):
        result = run("eval", "answerability", *args, "--out", str(out))
        assert result.exit_code == 2 and "not found" in result.output
    assert not out.exists()  # nothing answered, nothing written
