"""The decision loop from the command line, on the data dir (no server): models, a collection's profile,
an experiment's lifecycle and its offline replay through `eval rag` with `eval compare` of each arm.
The scripted LLM and the hashing embedder: what is tested is the plumbing, not answer quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SPEC = """
name: replayed
collections: [kb]
seed: 3
arms:
  - {name: control, weight: 1}
  - {name: v4, weight: 1, overrides: {prompt: answer@v4, top_k: 2, fusion: rrf}}
"""


@pytest.fixture
def run(fake_cli: Any) -> Any:
    return fake_cli


def test_models_profile_experiment_and_replay(run: Any, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "etna.txt").write_text("Mount Etna is an active volcano on the east coast of Sicily.")
    (corpus / "rome.txt").write_text("Rome is the capital of Italy and stands on the river Tiber.")
    run("ingest", str(corpus), "--collection", "kb")

    listed = run("models", "list")
    assert listed["default"] == "scripted-model"
    run(
        "models",
        "add",
        "gpu",
        "--provider",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "llama",
    )
    assert "base_url" in run("models", "add", "x", "--provider", "openai", code=2)
    assert "gpu" in {m["name"] for m in run("models", "list")["models"]}

    assert run("collections", "profile", "kb", "--set", "top_k=3")["profile"] == {"top_k": 3}
    assert "top_k" in run("collections", "profile", "kb", "--set", "top_k=zero", code=2)
    assert "--set takes key=value" in run("collections", "profile", "kb", "--set", "colour=red", code=2)
    assert run("collections", "profile", "kb", "--set", "top_k=")["profile"] == {}

    spec = tmp_path / "exp.yaml"
    spec.write_text(SPEC)
    assert run("experiments", "create", "--file", str(spec))["status"] == "draft"
    assert "already exists" in run("experiments", "create", "--file", str(spec), code=2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncollections: [kb]\narms: []\n")
    assert "arms" in run("experiments", "create", "--file", str(bad), code=2)
    assert run("experiments", "start", "replayed")["status"] == "running"
    assert run("experiments", "pause", "replayed")["status"] == "paused"
    assert [e["name"] for e in run("experiments", "list")["experiments"]] == ["replayed"]

    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps(q)
            for q in (
                {"question": "Where is Mount Etna?", "reference": "Sicily"},
                {"question": "What is the capital of Italy?", "reference": "Rome"},
                {"question": "Which river runs through Rome?", "reference": "The Tiber"},
            )
        )
    )
    replayed = run("experiments", "replay", "replayed", "--questions", str(questions), "--out", "runs")
    assert replayed["control"] == "control" and set(replayed["deltas"]) == {"v4"}
    assert replayed["deltas"]["v4"]["string_presence"]["n"] == 3  # paired over the three questions
    v4 = json.loads((tmp_path / "runs" / "v4" / "run.json").read_text())
    assert (v4["prompt"], v4["retrieval"]["top_k"], v4["retrieval"]["fusion"]) == ("answer@v4", 2, "rrf")
    control = json.loads((tmp_path / "runs" / "control" / "run.json").read_text())
    assert (control["prompt"], control["overrides"]) == ("answer@v6", {})
    assert list((tmp_path / "runs" / "v4").glob("compare-vs-*.html"))

    report = run("experiments", "report", "replayed", "--out", "report")
    assert report["arms"]["control"]["units"] == 0  # replays are offline: no live traffic
    assert (tmp_path / "report" / "report.html").is_file()
    assert run("experiments", "conclude", "replayed", "--arm", "v4")["experiment"]["status"] == "stopped"
    shown = run("collections", "profile", "kb")
    assert shown["profile"] == {"prompt": "answer@v4", "top_k": 2, "fusion": "rrf"}
    # An eval over the collection now measures what serves it: the profile, unless told otherwise.
    run("eval", "rag", "--questions", str(questions), "-c", "kb", "--out", "after", "--set", "top_k=3")
    after = json.loads((tmp_path / "after" / "run.json").read_text())
    assert (after["prompt"], after["retrieval"]["top_k"], after["retrieval"]["fusion"]) == (
        "answer@v4",
        3,
        "rrf",
    )
