"""Document classification at ingestion on the fake graph: a zero-shot labeler (label descriptions) and
a trained one write a metadata field into new documents before they are chunked, so retrieval filters
use it; the uploader's own value is kept; bad labelers are refused; the labeler is its tenant's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.auth.principal import Principal
from app.container import Container
from app.services.document_labels import parse_labeler
from app.services.errors import InvalidInput
from ingest.vector_index import CollectionNotFound
from tests.unit.fakes import ANONYMOUS, fake_container, fitted, ingest

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="module")]

DOCS = {
    "leave.txt": b"Annual leave: employees get 30 vacation days of holiday leave a year.",
    "vpn.txt": b"The VPN needs your laptop password; the wifi and printer are set up by IT.",
}
ZERO_SHOT = {
    "field": "topic",
    "labels": {"hr": "leave vacation holiday days", "it": "vpn laptop password wifi"},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def container(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    async with fake_container(tmp_path_factory.mktemp("labels"), experiments={"refresh_s": 0.0}) as built:
        for name in ("kb", "trained", "kept"):
            await ingest(built, name, {"seed.txt": b"A first document."})
        yield built


def topics(container: Container, collection: str) -> dict[str, object]:
    return {r.source: r.metadata.get("topic") for r in container.store.iter_documents(collection)}


async def test_a_zero_shot_labeler_labels_new_documents_and_filters_use_it(container: Container) -> None:
    await container.document_labels.set(ANONYMOUS, "kb", parse_labeler(ZERO_SHOT))
    assert (await container.document_labels.get(ANONYMOUS, "kb"))["labeler"]["field"] == "topic"
    assert (await ingest(container, "kb", DOCS)).status == "succeeded"
    found = topics(container, "kb")
    assert (found["leave.txt"], found["vpn.txt"]) == ("hr", "it")
    assert found["seed.txt"] is None  # ingested before the labeler: unchanged documents keep what they had
    hits = await container.retrieval.retrieve("kb", "password", top_k=5, filters={"topic": "it"})
    assert [h.metadata["source"] for h in hits.hits] == ["vpn.txt"]


async def test_a_trained_labeler_and_the_uploaders_own_value(container: Container) -> None:
    model_dir = container.settings.data_dir / "models" / "doc-topics"
    fitted().save(model_dir)
    await container.document_labels.set(
        ANONYMOUS, "trained", parse_labeler({"field": "topic", "model": str(model_dir)})
    )
    await ingest(container, "trained", DOCS)
    found = topics(container, "trained")
    assert (found["leave.txt"], found["vpn.txt"]) == ("leave", "it")
    await container.document_labels.set(ANONYMOUS, "kept", parse_labeler(ZERO_SHOT))
    await ingest(container, "kept", {"vpn.txt": DOCS["vpn.txt"]}, metadata={"topic": "security"})
    assert topics(container, "kept")["vpn.txt"] == "security"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"field": "topic"}, "labels"),
        ({"field": "topic", "labels": {"a": "x"}, "model": "/m"}, "labels"),
        ({"field": "bad field", "labels": {"a": "x"}}, "field"),
        ({"field": "topic", "labels": {"a": ""}}, "description"),
        ({"field": "topic", "labels": {"a": "x"}, "colour": "red"}, "colour"),
    ],
)
async def test_bad_labelers_are_refused(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        parse_labeler(spec)
    assert refused.value.code == "invalid_labeler"


async def test_a_trained_labeler_outside_the_roots_is_refused(
    container: Container, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    fitted().save(elsewhere)
    with pytest.raises(InvalidInput) as refused:
        await container.document_labels.set(ANONYMOUS, "kb", parse_labeler({"model": str(elsewhere)}))
    assert refused.value.code == "invalid_classifier"


async def test_a_labeler_belongs_to_its_tenant(container: Container) -> None:
    other = Principal(tenant="t2", role="admin", key_id="k-t2")
    with pytest.raises(CollectionNotFound):
        await container.document_labels.get(other, "kb")
    with pytest.raises(CollectionNotFound):
        await container.document_labels.set(other, "kb", None)
