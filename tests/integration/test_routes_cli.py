"""`ragserver routes ...` from the command line on the data dir: set and show a chain, curated answers
(add, approve, list), `routes train` / `routes eval` on a labelled file, and `routes replay` of a question
set (stage shares, answers that would change, tokens and cost saved). The scripted LLM and the hashing
embedder: what is tested is the plumbing, not the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

CHAIN = """
stages:
  - {type: rule, id: greeting, pattern: '^(hi|hello)\\b', answer: "Hello!"}
  - {type: curated, threshold: 0.95}
  - {type: llm}
"""


@pytest.fixture
def run(fake_cli: Any) -> Any:
    return fake_cli


def test_chain_curated_train_eval_replay(run: Any, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "leave.txt").write_text("Employees get 30 days of paid leave a year.")
    run("ingest", str(corpus), "--collection", "kb")
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN)
    assert [s["id"] for s in run("routes", "set", "kb", "--file", str(chain))["chain"]["stages"]] == [
        "greeting", "curated", "llm"
    ]  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {type: rule, id: r, pattern: '(a)\\1', answer: x}\n")
    assert "RE2" in run("routes", "set", "kb", "--file", str(bad), code=2)
    assert run("routes", "show", "kb")["chain"]["stages"][0]["pattern"] == "^(hi|hello)\\b"

    added = run(
        "routes", "curated", "add", "kb", "--question", "How many days of leave?", "--answer", "30 days."
    )
    assert added["status"] == "candidate"
    assert run("routes", "curated", "approve", "kb", added["id"])["status"] == "approved"
    assert [c["id"] for c in run("routes", "curated", "list", "kb", "--status", "approved")["curated"]] == [
        added["id"]
    ]

    # Train and evaluate a classifier on a small labelled file.
    labels = tmp_path / "labels.jsonl"
    words = {"leave": ["leave", "vacation", "holiday"], "it": ["vpn", "laptop", "password"]}
    frames = ["{}", "question about {}", "help with {}", "my {}", "{} please", "what about {}"]
    labels.write_text(
        "\n".join(
            json.dumps({"text": f.format(w), "label": label})
            for label, ws in words.items()
            for w in ws
            for f in frames
        )
    )
    trained = run(
        "routes", "train", "--labels", str(labels), "--out", str(tmp_path / "data" / "models" / "intent")
    )
    assert {"macro_f1", "accuracy", "per_class"} <= set(trained) and set(trained["per_class"]) == {
        "leave",
        "it",
    }
    card = json.loads((tmp_path / "data" / "models" / "intent" / "card.json").read_text())
    assert card["data_sha256"] and card["counts"] == {"it": 18, "leave": 18}
    evaluated = run(
        "routes", "eval", "--model", str(tmp_path / "data" / "models" / "intent"), "--labels", str(labels)
    )
    assert evaluated["per_class"]["it"]["support"] == 18 and evaluated["macro_f1"] >= 0.9
    single = tmp_path / "single.jsonl"
    single.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    assert "two labels" in run(
        "routes", "train", "--labels", str(single), "--out", str(tmp_path / "x"), code=2
    )

    # Replay a question set: one question per stage.
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps(q)
            for q in (
                {"question": "hello there", "answer_given": "Hi, how can I help?"},
                {"question": "How many days of leave?", "answer_given": "30 days."},
                {"question": "Who runs the canteen?"},
            )
        )
    )
    replayed = run(
        "routes", "replay", "kb", "--questions", str(questions), "--out", str(tmp_path / "replay.jsonl")
    )
    assert replayed["stage_shares"] == {"curated": 0.3333, "llm": 0.3333, "rule": 0.3333}
    assert (
        replayed["llm_answers_saved"] == 2 and replayed["answers_changed"] == 1
    )  # the greeting's answer differs
    rows = [json.loads(line) for line in (tmp_path / "replay.jsonl").read_text().splitlines()]
    assert [r["answered_by"] for r in rows] == ["rule", "curated", "llm"]
    assert run("routes", "clear", "kb")["chain"] is None
    assert "no routing chain" in run("routes", "replay", "kb", "--questions", str(questions), code=2)
