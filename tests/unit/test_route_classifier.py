"""The routing chain's classifier: training (a stratified split, thresholds fitted from cross-validated
predictions, a card), its JSON model (no pickle), the report, and the classifier stage on the fake graph
(the hashing embedder: the labels below differ by their words)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from app.container import Container
from app.routing.chain import parse_chain
from app.routing.classifier import MODEL_FILE, RouteClassifier, read_labels, report, train
from app.services.chat_types import ChatQuery
from app.services.errors import InvalidInput
from ingest.embedder import HashingEmbedder
from tests.unit.fakes import ANONYMOUS, TOPICS, fake_container, fitted, ingest, labelled

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="module")]


async def test_training_writes_a_card_with_held_out_figures_and_fitted_thresholds() -> None:
    model = fitted()
    card = model.card
    assert set(model.classes) == set(TOPICS) and card["held_out"] + card["train"] == 144
    held = card["held_out_report"]
    assert held["macro_f1"] >= 0.9 and set(held["per_class"]) == set(TOPICS)
    assert all(set(row) == {"precision", "recall", "f1", "support"} for row in held["per_class"].values())
    assert sum(sum(row.values()) for row in held["confusion"].values()) == card["held_out"]
    assert set(model.thresholds) == set(TOPICS) and all(0.0 < t <= 1.0 for t in model.thresholds.values())
    assert card["counts"] == {label: 48 for label in TOPICS} and card["data_sha256"] == "x"
    # The same seed, the same model.
    again = fitted()
    assert again.thresholds == model.thresholds and np.allclose(again.coef, model.coef)


async def test_the_model_is_json_and_loads_to_the_same_predictions(tmp_path: Path) -> None:
    model = fitted()
    model.save(tmp_path / "clf")
    saved = json.loads((tmp_path / "clf" / MODEL_FILE).read_text())  # JSON: loading it runs no code
    assert saved["classes"] == model.classes
    loaded = RouteClassifier.load(tmp_path / "clf")
    vectors = HashingEmbedder().embed(["vpn password", "hello there", "annual leave days"])
    assert np.allclose(loaded.probabilities(vectors), model.probabilities(vectors), atol=1e-5)
    assert [p for p, _, _ in loaded.predict(vectors)] == ["it", "small_talk", "leave"]
    assert loaded.card["held_out_report"] == model.card["held_out_report"]


async def test_two_classes_use_the_sigmoid() -> None:
    texts, labels = labelled()
    keep = [i for i, label in enumerate(labels) if label != "small_talk"]
    embedder = HashingEmbedder()
    model = train([texts[i] for i in keep], [labels[i] for i in keep], embedder.embed, embedder="hashing")
    assert model.coef.shape[0] == 1
    assert [p for p, _, _ in model.predict(embedder.embed(["vpn now", "vacation days"]))] == ["it", "leave"]


async def test_labels_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_labels(bad)
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(ValueError, match="two labels"):
        read_labels(one)


async def test_the_report_counts_handed_on_questions_as_misses() -> None:
    found = report(["a", "b"], ["a", "a", "b", "b"], ["a", None, "b", "a"])
    assert found["handed_on"] == 1 and found["accuracy"] == 0.5
    assert found["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert found["confusion"]["a"] == {"a": 1, "b": 0, "handed_on": 1}


# -- the classifier stage ------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def container(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    async with fake_container(tmp_path_factory.mktemp("classifier"), experiments={"refresh_s": 0.0}) as built:
        await ingest(built, "kb", {"leave.txt": b"Employees get 30 days of paid leave a year."})
        fitted().save(built.settings.data_dir / "models" / "intent")
        yield built


async def test_the_classifier_stage_refuses_answers_or_hands_on(container: Container) -> None:
    chain = {
        "stages": [
            {
                "type": "classifier",
                "id": "intent",
                "model": str(container.settings.data_dir / "models" / "intent"),
                "routes": {"it": {"refuse": "Ask the IT desk."}, "small_talk": {"answer": "Hello!"}},
            }
        ]
    }
    await container.routing.set_chain(ANONYMOUS, "kb", parse_chain(chain))

    async def ask(message: str) -> tuple[str, str | None, dict[str, object]]:
        result = await container.chat.chat(ChatQuery(message=message, collection="kb"), principal=ANONYMOUS)
        return result.answered_by, result.route, result.retrieval["routing"][0]

    answered_by, route, decision = await ask("vpn password")
    assert (answered_by, route, decision["label"], decision["outcome"]) == (
        "refused",
        "intent:it",
        "it",
        "refused",
    )
    assert (await ask("hello"))[:2] == ("classifier", "intent:small_talk")
    # A confident `leave` has no route: the LLM answers.
    answered_by, _, decision = await ask("annual leave")
    assert answered_by == "llm" and decision["outcome"] == "handed_on"
    # Under the confidence asked for: handed on, never a guess.
    chain["stages"][0]["min_confidence"] = 0.9999  # type: ignore[index]
    await container.routing.set_chain(ANONYMOUS, "kb", parse_chain(chain))
    answered_by, _, decision = await ask("hello")
    assert answered_by == "llm" and decision["reason"] == "low confidence" and decision["threshold"] == 0.9999


async def test_a_classifier_outside_the_model_roots_or_with_unknown_labels_is_refused(
    container: Container, tmp_path: Path
) -> None:
    fitted().save(tmp_path / "elsewhere")
    outside = {"stages": [{"type": "classifier", "model": str(tmp_path / "elsewhere")}]}
    with pytest.raises(InvalidInput) as refused:
        await container.routing.set_chain(ANONYMOUS, "kb", parse_chain(outside))
    assert refused.value.code == "invalid_classifier"
    model = str(container.settings.data_dir / "models" / "intent")
    unknown = {"stages": [{"type": "classifier", "model": model, "routes": {"payroll": {"refuse": "No."}}}]}
    with pytest.raises(InvalidInput, match="no label payroll"):
        await container.routing.set_chain(ANONYMOUS, "kb", parse_chain(unknown))
    # Trained on another embedder: its vectors would mean nothing here.
    other = fitted()
    other.embedder = "sentence-transformers/all-MiniLM-L6-v2"
    other.save(container.settings.data_dir / "models" / "other")
    foreign = {
        "stages": [{"type": "classifier", "model": str(container.settings.data_dir / "models" / "other")}]
    }
    with pytest.raises(InvalidInput, match="trained on the embedder"):
        await container.routing.set_chain(ANONYMOUS, "kb", parse_chain(foreign))
