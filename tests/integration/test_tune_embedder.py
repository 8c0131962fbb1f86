"""`ragserver tune embedder` and `tune split-qrels` as a user runs them, on a small corpus: the data it
reads (only the judged queries), the model and card it writes, and that the model serves (torch and the
ONNX query path) like the packaged one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli.main import app
from evals.embedder_tuning import TuningError, build_training_data, load_pairs

pytestmark = pytest.mark.integration

TOPICS = [
    ("volcano", "lava flows and eruptions of stratovolcanoes"),
    ("penguin", "emperor penguins breeding on antarctic sea ice"),
    ("chess", "gambits and openings in tournament chess"),
    ("bread", "sourdough starters, yeast and dough hydration"),
    ("glacier", "alpine glaciers retreating as summers warm"),
    ("reef", "coral reefs bleaching in warmer oceans"),
    ("comet", "comet tails pointing away from the sun"),
    ("violin", "violin bows strung with horsehair and rosin"),
]


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    corpus = tmp_path / "corpus.jsonl"
    rows = []
    for i, (topic, text) in enumerate(TOPICS):
        rows.append({"_id": f"d{i}", "title": topic.title(), "text": f"A study of {text}."})
        rows.append({"_id": f"n{i}", "title": f"{topic.title()} notes", "text": f"Loose notes on {topic}s."})
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = tmp_path / "queries.jsonl"
    # q-test is in the queries file (every split's texts) but in no qrels given: it must never be read.
    texts = [{"_id": f"q{i}", "text": f"what do we know about {t}s?"} for i, (t, _) in enumerate(TOPICS)]
    texts.append({"_id": "q-test", "text": "HELD OUT TEST QUERY"})
    queries.write_text("".join(json.dumps(r) + "\n" for r in texts))
    qrels = tmp_path / "train.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(TOPICS))))
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def _run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_training_data_reads_only_the_judged_queries_and_holds_some_out(dataset) -> None:
    data = build_training_data(
        corpus=dataset["corpus"],
        queries=dataset["queries"],
        qrels=dataset["qrels"],
        pairs=None,
        holdout=0.25,
        seed=1,
    )
    trained = {q for q, _ in data.train}
    assert "HELD OUT TEST QUERY" not in trained and "HELD OUT TEST QUERY" not in data.dev_queries.values()
    assert len(data.dev_queries) == 2 and len(data.train_query_ids) == 6
    assert not set(data.dev_queries.values()) & trained  # held-out queries are not trained on
    assert all(
        text.startswith(
            ("Volcano\n", "Penguin\n", "Chess\n", "Bread\n", "Glacier\n", "Reef\n", "Comet\n", "Violin\n")
        )
        for _, text in data.train
    )


def test_tune_embedder_writes_a_model_that_serves_like_the_packaged_one(
    dataset, tmp_path: Path, onnx_cache_dir
) -> None:
    out = tmp_path / "tuned"
    args = [f"--{k}={v}" for k, v in dataset.items()]
    result = _run(
        "tune",
        "embedder",
        *args,
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--max-seq-length",
        "32",
        "--holdout",
        "0.25",
    )
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert card["steps"] >= 2 and card["training_rows"] == 6
    assert "BM25 hard negative" in card["loss"] and card["base_model"].endswith("model")
    assert card["heldout"]["queries"] == 2
    assert set(card["heldout"]["before"]) >= {"ndcg@10", "mrr@10"} and card["heldout"]["after"]
    assert [d for d in card["data"] if "qrels" in d][0]["train_queries"] == 6
    assert json.loads((out / "ragserver-tuning.json").read_text())["steps"] == card["steps"]
    readme = (out / "README.md").read_text()
    assert "Base model" in readme and "Held-out queries" in readme

    from app.settings import EmbeddingSettings
    from ingest.embedder import SentenceTransformerEmbedder
    from ingest.onnx_encoder import build_query_embedder

    tuned = SentenceTransformerEmbedder(out)
    assert tuned.dim == 384 and tuned.max_seq_length == 256  # the base's length, not the training one
    texts = ["volcano eruptions", "sourdough"]
    for precision, close in (("fp32", 1e-4), ("int8", 0.05)):  # int8: checked by cosine at load
        settings = EmbeddingSettings(query_backend="onnx", query_precision=precision, model_path=str(out))
        onnx = build_query_embedder(settings, tuned, onnx_cache_dir)
        assert np.abs(onnx.embed(texts) - tuned.embed(texts)).max() < close, precision


def test_tune_embedder_on_pairs_alone(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"query": f"about {t}", "positive": f"{t}: {text}"}) + "\n" for t, text in TOPICS)
    )
    out = tmp_path / "tuned"
    result = _run(
        "tune",
        "embedder",
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-seq-length",
        "32",
    )
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert card["training_rows"] == 8 and card["heldout"]["queries"] == 0
    assert (out / "model.safetensors").exists() or any(out.glob("*.safetensors"))


def test_tune_embedder_refusals(dataset, tmp_path: Path) -> None:
    out = str(tmp_path / "m")
    nothing = _run("tune", "embedder", "--out", out)
    assert nothing.exit_code == 2 and "--qrels" in nothing.output
    alone = _run("tune", "embedder", "--qrels", str(dataset["qrels"]), "--out", out)
    assert alone.exit_code == 2 and "needs --corpus and --queries" in alone.output
    missing = _run("tune", "embedder", "--pairs", str(tmp_path / "none.jsonl"), "--out", out)
    assert missing.exit_code == 2 and "no such file" in missing.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    with pytest.raises(TuningError, match="bad.jsonl:1"):
        load_pairs(bad)
    result = _run("tune", "embedder", "--pairs", str(bad), "--out", out)
    assert result.exit_code == 2 and "needs a 'query' and a 'positive'" in result.output
    unjudged = tmp_path / "other.tsv"
    unjudged.write_text("qx\td0\t1\n")
    args = ["--corpus", str(dataset["corpus"]), "--queries", str(dataset["queries"])]
    none = _run("tune", "embedder", *args, "--qrels", str(unjudged), "--out", out)
    assert none.exit_code == 2 and "no query of the qrels file" in none.output
    assert not Path(out).exists()


def test_split_qrels_is_disjoint_complete_and_seeded(dataset, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    result = _run(
        "tune",
        "split-qrels",
        "--qrels",
        str(dataset["qrels"]),
        "--train-out",
        str(a),
        "--dev-out",
        str(b),
        "--dev-fraction",
        "0.25",
    )
    assert result.exit_code == 0 and json.loads(result.stdout) == {"train_queries": 6, "dev_queries": 2}
    from evals.retrieval_eval import load_qrels

    train, dev = load_qrels(a), load_qrels(b)
    assert not set(train) & set(dev) and set(train) | set(dev) == set(load_qrels(dataset["qrels"]))
    again = tmp_path / "c.tsv"
    _run(
        "tune",
        "split-qrels",
        "--qrels",
        str(dataset["qrels"]),
        "--train-out",
        str(again),
        "--dev-out",
        str(tmp_path / "d.tsv"),
        "--dev-fraction",
        "0.25",
    )
    assert again.read_text() == a.read_text()
