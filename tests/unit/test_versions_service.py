"""CollectionVersions on the fake graph (tests/unit/fakes.py): `serving()` resolves a collection to its
version, pipeline and retriever; a rebuild fills a new version and switches the alias; rollback and prune;
uploads and retrieval follow the switch. With the hashing embedder a rebuild changes the chunking, not
the model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.container import Container
from app.services.collection_versions import CollectionVersion
from tests.unit.fakes import ANONYMOUS, fake_container, ingest

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="module")]

# About 170 tokens each: one chunk at the configured 256-token chunks, several at 32.
ETNA = " ".join(
    f"Sentence {i} says that Mount Etna is a volcano with lava and ash." for i in range(12)
).encode()
PENGUINS = " ".join(
    f"Note {i}: emperor penguins breed during the Antarctic winter." for i in range(14)
).encode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def container(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    """One graph for the module; each test rebuilds collections of its own. The alias is read afresh
    on every request (alias_ttl_s 0), so a switch shows at once."""
    async with fake_container(tmp_path_factory.mktemp("versions"), collections={"alias_ttl_s": 0}) as built:
        built.versions.settle_s = 0.0  # no write races a switch here: no catch-up pause after it
        yield built


async def rebuilt(container: Container, collection: str) -> CollectionVersion:
    """`collection` rebuilt with 32-token chunks overlapping by 4; the version made."""
    versions = container.versions
    target = await asyncio.to_thread(versions.start_rebuild, collection, chunk_size=32, chunk_overlap=4)
    return await asyncio.to_thread(versions.run_rebuild, target)


async def test_a_collection_never_rebuilt_is_served_by_v1_under_its_own_name(container: Container) -> None:
    await ingest(container, "fresh", {"etna.txt": ETNA})
    serving = container.versions.serving("fresh")
    assert (serving.label, serving.physical) == ("v1", "fresh")
    assert (serving.version.embedding_model, serving.version.chunk_size, serving.version.chunk_overlap) == (
        None,
        None,
        None,
    )
    assert serving.pipeline is container.pipeline and serving.retriever is container.retriever
    assert (serving.pipeline.chunker.chunk_size, serving.pipeline.chunker.chunk_overlap) == (256, 32)
    assert [
        (v.label, v.state, v.active, v.documents, v.chunks) for v in container.versions.versions("fresh")
    ] == [("v1", "ready", True, 1, 1)]


async def test_a_rebuild_with_other_chunking_fills_v2_and_switches_the_alias(container: Container) -> None:
    store, versions = container.store, container.versions
    await ingest(container, "rechunked", {"etna.txt": ETNA, "penguins.txt": PENGUINS})
    target = await asyncio.to_thread(versions.start_rebuild, "rechunked", chunk_size=32, chunk_overlap=4)
    during = versions.serving("rechunked").label
    done = await asyncio.to_thread(versions.run_rebuild, target)
    serving = versions.serving("rechunked")
    assert (target.label, target.physical, target.state, during) == ("v2", "rechunked--v2", "building", "v1")
    assert (done.state, done.active, done.documents) == ("ready", True, 2)
    assert (serving.label, serving.physical) == ("v2", "rechunked--v2")
    assert (serving.pipeline.chunker.chunk_size, serving.pipeline.chunker.chunk_overlap) == (32, 4)
    v1 = {r.doc_id: r for r in store.iter_documents("rechunked")}
    v2 = {r.doc_id: r for r in store.iter_documents("rechunked--v2")}
    # The same documents, each as its original (same content hash), cut into smaller chunks.
    assert {d: r.content_hash for d, r in v2.items()} == {d: r.content_hash for d, r in v1.items()}
    assert [r.chunks for r in v1.values()] == [1, 1]
    assert all(r.chunks > 1 for r in v2.values())
    assert done.chunks == store.count_chunks("rechunked--v2") == sum(r.chunks for r in v2.values())
    retrieved = await container.retrieval.retrieve("rechunked", "Mount Etna volcano lava", top_k=3)
    assert (retrieved.version, retrieved.physical, len(retrieved.hits)) == ("v2", "rechunked--v2", 3)
    assert {h.chunk_id for h in retrieved.hits} <= store.chunk_ids("rechunked--v2")


async def test_rollback_returns_to_v1(container: Container) -> None:
    await ingest(container, "rolled", {"etna.txt": ETNA})
    await rebuilt(container, "rolled")
    back = await asyncio.to_thread(container.versions.rollback, "rolled")
    retrieved = await container.retrieval.retrieve("rolled", "Mount Etna volcano", top_k=1)
    assert (back.label, back.active) == ("v1", True)
    assert container.versions.serving("rolled").physical == "rolled"
    assert (retrieved.version, retrieved.physical) == ("v1", "rolled")
    assert retrieved.hits[0].chunk_id in container.store.chunk_ids("rolled")
    assert [(v.label, v.state, v.active) for v in container.versions.versions("rolled")] == [
        ("v1", "ready", True),
        ("v2", "ready", False),
    ]


async def test_prune_drops_the_version_no_longer_serving(container: Container) -> None:
    await ingest(container, "pruned", {"etna.txt": ETNA})
    await rebuilt(container, "pruned")
    await asyncio.to_thread(container.versions.rollback, "pruned")
    dropped = await asyncio.to_thread(container.versions.prune, "pruned")
    assert [v.label for v in dropped] == ["v2"]
    assert not container.store.has_collection("pruned--v2")
    assert [(v.label, v.state, v.active) for v in container.versions.versions("pruned")] == [
        ("v1", "ready", True),
        ("v2", "pruned", False),
    ]
    assert container.store.count_documents("pruned") == 1  # the serving version is untouched


async def test_uploads_after_the_switch_land_in_the_serving_version(container: Container) -> None:
    store = container.store
    await ingest(container, "moved", {"etna.txt": ETNA})
    await rebuilt(container, "moved")
    job = await ingest(container, "moved", {"penguins.txt": PENGUINS, "etna.txt": ETNA})
    penguins, etna = job.files
    # etna.txt was copied into v2 as it was: uploading it again changes nothing.
    assert [(f.status, f.chunks > 1) for f in job.files] == [("succeeded", True), ("skipped", True)]
    assert list(store.get_documents("moved--v2", [penguins.document_id])) == [penguins.document_id]
    assert store.get_documents("moved", [penguins.document_id]) == {}
    records, total = await container.documents.list_documents("moved", 10, 0, principal=ANONYMOUS)
    assert (sorted(r.doc_id for r in records), total) == (sorted([penguins.document_id, etna.document_id]), 2)
