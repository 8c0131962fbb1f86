"""The BM25 index, derived from the vector index, stays consistent with it through ingest, replace,
delete and crashes, with the real packaged embedder and an embedded Chroma in tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.container import Container
from app.retrieval.bm25_index import BM25Index
from app.settings import Settings
from ingest.embedder import Embedder, SentenceTransformerEmbedder
from ingest.pipeline import IngestPipeline
from ingest.types import Segment, SourceDocument

pytestmark = pytest.mark.integration

COLLECTION = "docs"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return SentenceTransformerEmbedder()


def container(data_dir: Path, embedder: Embedder, **settings: object) -> Container:
    # One loaded model shared by the containers of a test.
    return Container(Settings(data_dir=data_dir, **settings), embedder=embedder)  # type: ignore[arg-type]


def doc(doc_id: str, text: str, **metadata: object) -> SourceDocument:
    return SourceDocument(
        doc_id=doc_id, source=f"{doc_id}.txt", title=doc_id, segments=[Segment(text)], metadata=dict(metadata)
    )


DOCS = [
    doc(
        "volcano",
        "Basaltic lava flows from shield volcanoes cool into columnar basalt.",
        team="geo",
        year=2020,
    ),
    doc(
        "kepler", "Kepler's third law relates orbital period to the semi-major axis.", team="astro", year=2021
    ),
    doc(
        "enzyme",
        "Enzyme kinetics follow the Michaelis-Menten equation at low substrate.",
        team="bio",
        year=2022,
    ),
]


def bm25_of(c: Container) -> BM25Index:
    return c.bm25


def chroma_ids(c: Container) -> set[str]:
    return {ch.chunk_id for ch in c.store.iter_chunks(COLLECTION)}


def table_ids(index: BM25Index) -> set[str]:
    return set(index._table(COLLECTION).ids())


def snapshot_ids(index: BM25Index) -> set[str]:
    return set(index._snapshot(COLLECTION).chunk_ids)


def found(index: BM25Index, query: str) -> list[str]:
    return [h.doc_id for h in index.search(COLLECTION, query, 10)]


def assert_consistent(c: Container) -> None:
    index = bm25_of(c)
    assert table_ids(index) == chroma_ids(c) == snapshot_ids(index)


def test_ingest_replace_delete_keep_bm25_and_chroma_in_step(tmp_path: Path, embedder: Embedder) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS, COLLECTION)
    assert_consistent(c)
    index = bm25_of(c)
    assert found(index, "basalt lava") == ["volcano"]
    assert found(index, "orbital period") == ["kepler"]

    # Replace: the old text's terms disappear, the new ones are found, no stale chunk survives.
    report = c.pipeline.ingest(
        [doc("volcano", "Stratovolcanoes erupt andesitic magma explosively.")], COLLECTION
    )
    assert report.replaced == 1
    assert_consistent(c)
    assert found(index, "basalt lava") == []
    assert found(index, "andesitic magma") == ["volcano"]

    # Re-ingesting unchanged documents is a no-op for the index too.
    before = index._read_current(COLLECTION)
    assert c.pipeline.ingest(DOCS[1:], COLLECTION).skipped == 2
    assert index._read_current(COLLECTION) == before

    c.pipeline.delete(COLLECTION, ["kepler"])
    assert_consistent(c)
    assert found(index, "orbital period") == []
    assert sorted(h.doc_id for h in index.search(COLLECTION, "volcano enzyme", 10)) == ["enzyme", "volcano"]


def test_a_new_process_loads_the_persisted_index_without_rebuilding(
    tmp_path: Path, embedder: Embedder
) -> None:
    first = container(tmp_path, embedder)
    first.pipeline.ingest(DOCS, COLLECTION)
    written = bm25_of(first)._read_current(COLLECTION)

    second = container(tmp_path, embedder)
    index = bm25_of(second)
    assert found(index, "Michaelis Menten") == ["enzyme"]
    assert index._read_current(COLLECTION) == written  # loaded, not re-indexed


def test_another_process_flush_is_seen_by_a_loaded_index(tmp_path: Path, embedder: Embedder) -> None:
    server, cli = container(tmp_path, embedder), container(tmp_path, embedder)
    server.pipeline.ingest(DOCS[:1], COLLECTION)
    assert found(bm25_of(server), "orbital period") == []
    cli.pipeline.ingest(DOCS[1:], COLLECTION)
    assert found(bm25_of(server), "orbital period") == ["kepler"]


def test_chunks_that_reached_chroma_but_not_bm25_are_recovered_on_load(
    tmp_path: Path, embedder: Embedder
) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS[:1], COLLECTION)
    # A run killed after Chroma's write but before the BM25 listener saw it: Chroma alone has the chunks.
    bare = IngestPipeline(c.store, c.embedder, c.chunker)
    bare.ingest(DOCS[1:], COLLECTION)

    restarted = container(tmp_path, embedder)
    index = bm25_of(restarted)
    assert found(index, "orbital period") == ["kepler"]
    assert_consistent(restarted)


def test_deletions_bm25_missed_are_recovered_on_load(tmp_path: Path, embedder: Embedder) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS, COLLECTION)
    c.store.delete_documents(COLLECTION, ["enzyme"])  # behind the listener's back

    restarted = container(tmp_path, embedder)
    assert found(bm25_of(restarted), "Michaelis Menten") == []
    assert_consistent(restarted)


def test_applied_but_unflushed_batches_are_indexed_on_load(tmp_path: Path, embedder: Embedder) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS[:1], COLLECTION)
    index = bm25_of(c)
    # A run killed between apply() and flush(): the table moved on, the snapshot did not.
    extra = c.chunker.chunk(DOCS[1], version="v1", ingested_at=0.0)
    c.store.upsert_chunks(COLLECTION, extra, c.embedder.embed([ch.text for ch in extra]))
    index.apply(COLLECTION, extra, [])

    restarted = container(tmp_path, embedder)
    assert found(bm25_of(restarted), "orbital period") == ["kepler"]
    assert_consistent(restarted)


def test_a_collection_dropped_behind_the_index_is_resynced_at_the_next_flush(
    tmp_path: Path, embedder: Embedder
) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS, COLLECTION)
    index = bm25_of(c)
    assert found(index, "orbital period") == ["kepler"]
    c.store.drop_collection(COLLECTION)  # e.g. another process dropped and re-created it
    c.pipeline.ingest(DOCS[:1], COLLECTION)
    assert found(index, "orbital period") == []
    assert found(index, "basalt lava") == ["volcano"]
    assert_consistent(c)


def test_bm25_on_a_missing_collection_is_not_found(tmp_path: Path, embedder: Embedder) -> None:
    from ingest.vector_index import CollectionNotFound

    c = container(tmp_path, embedder)
    for mode in ("bm25", "dense", "hybrid"):
        with pytest.raises(CollectionNotFound):
            c.retriever.retrieve("nope", "anything", mode=mode)


def test_changing_the_analyzer_settings_reindexes_on_next_load(tmp_path: Path, embedder: Embedder) -> None:
    from app.settings import RetrievalSettings

    c = container(tmp_path, embedder)
    c.pipeline.ingest([doc("tides", "The moon's pull raises the oceans twice a day.")], COLLECTION)
    assert found(bm25_of(c), "tides") == ["tides"]  # a title-only term

    no_titles = container(tmp_path, embedder, retrieval=RetrievalSettings(bm25_title_weight=0))
    assert found(bm25_of(no_titles), "tides") == []
    assert found(bm25_of(no_titles), "moon oceans") == ["tides"]


def test_filters_select_the_same_chunks_in_both_stages(tmp_path: Path, embedder: Embedder) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS, COLLECTION)
    retriever = c.retriever
    query = "volcano Kepler enzyme"  # a term of every document, so BM25 can return all of them
    everything = {"volcano", "kepler", "enzyme"}
    cases: list[tuple[dict[str, object], set[str]]] = [
        ({"team": "geo"}, {"volcano"}),
        ({"team": ["geo", "bio"]}, {"volcano", "enzyme"}),
        ({"document_id": "kepler"}, {"kepler"}),
        ({"year": {"gte": 2021}}, {"kepler", "enzyme"}),
        ({"year": [2020, 2022], "team": "bio"}, {"enzyme"}),
        ({"source": "enzyme.txt"}, {"enzyme"}),
        ({"ingested_at": {"gte": "2000-01-01T00:00:00Z"}}, everything),
        ({"ingested_at": {"lt": 0}}, set()),
        ({"title": "nothing"}, set()),
    ]
    for raw, expected in cases:
        for mode in ("dense", "bm25", "hybrid"):
            hits = retriever.retrieve(COLLECTION, query, top_k=10, mode=mode, filters=raw)
            assert {h.doc_id for h in hits} == expected, (mode, raw)
            # Hits carry the store's own text and metadata.
            assert all(h.text and h.metadata["doc_id"] == h.doc_id for h in hits)


def test_bm25_keeps_no_copy_of_chunk_text(tmp_path: Path, embedder: Embedder) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS, COLLECTION)
    c.bm25.load(COLLECTION)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "bm25").rglob("*") if p.is_file())
    assert b"Michaelis" not in stored and b"semi-major" not in stored
    assert found(c.bm25, "Michaelis Menten") == ["enzyme"]


def test_an_index_from_before_bm25_was_derived_is_rebuilt_from_the_store(
    tmp_path: Path, embedder: Embedder
) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS, COLLECTION)
    folder = tmp_path / "bm25" / COLLECTION
    for child in folder.iterdir():  # what an old data dir holds: a chunk table and no term table
        if child.name != ".lock":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    (folder / "chunks.sqlite3").write_bytes(b"")

    restarted = container(tmp_path, embedder)
    assert found(bm25_of(restarted), "orbital period") == ["kepler"]
    assert not (folder / "chunks.sqlite3").exists()
    assert_consistent(restarted)
