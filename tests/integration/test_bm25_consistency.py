"""The BM25 index stays consistent with Chroma through ingest, replace, delete and crashes, with the
real packaged embedder and an embedded Chroma in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.container import Container
from app.retrieval.bm25_index import BM25Index
from app.retrieval.filters import parse_filters
from app.settings import Settings
from ingest.embedder import Embedder, SentenceTransformerEmbedder
from ingest.pipeline import IngestPipeline
from ingest.types import Segment, SourceDocument

pytestmark = pytest.mark.integration

COLLECTION = "docs"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return SentenceTransformerEmbedder()


def container(data_dir: Path, embedder: Embedder) -> Container:
    c = Container(Settings(data_dir=data_dir))
    c.embedder = embedder  # share one loaded model between the containers of a test
    return c


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
    return next(x for x in c.index_listeners if isinstance(x, BM25Index))


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
    from ingest.vector_store import CollectionNotFound

    c = container(tmp_path, embedder)
    for mode in ("bm25", "dense", "hybrid"):
        with pytest.raises(CollectionNotFound):
            c.retriever.retrieve("nope", "anything", mode=mode)


def test_changing_the_analyzer_settings_reindexes_on_next_load(tmp_path: Path, embedder: Embedder) -> None:
    from app.settings import RetrievalSettings

    c = container(tmp_path, embedder)
    c.pipeline.ingest([doc("tides", "The moon's pull raises the oceans twice a day.")], COLLECTION)
    assert found(bm25_of(c), "tides") == ["tides"]  # a title-only term

    no_titles = Container(Settings(data_dir=tmp_path, retrieval=RetrievalSettings(bm25_title_weight=0)))
    no_titles.embedder = embedder
    assert found(bm25_of(no_titles), "tides") == []
    assert found(bm25_of(no_titles), "moon oceans") == ["tides"]


def test_filters_select_the_same_chunks_in_both_stages(tmp_path: Path, embedder: Embedder) -> None:
    c = container(tmp_path, embedder)
    c.pipeline.ingest(DOCS, COLLECTION)
    retriever = c.retriever
    query = "volcano Kepler enzyme"  # a term of every document, so BM25 can return all of them
    cases = [
        {"team": "geo"},
        {"team": ["geo", "bio"]},
        {"document_id": "kepler"},
        {"year": {"gte": 2021}},
        {"year": [2020, 2022], "team": "bio"},
        {"source": "enzyme.txt"},
        {"ingested_at": {"gte": "2000-01-01T00:00:00Z"}},
        {"ingested_at": {"lt": 0}},
        {"title": "nothing"},
    ]
    for raw in cases:
        flt = parse_filters(raw)
        assert flt is not None
        everything = [ch for ch in c.store.iter_chunks(COLLECTION)]
        expected = {ch.doc_id for ch in everything if flt.matches(ch.metadata)}
        for mode in ("dense", "bm25", "hybrid"):
            hits = retriever.retrieve(COLLECTION, query, top_k=10, mode=mode, filters=raw)
            assert {h.doc_id for h in hits} == expected, (mode, raw)


def test_the_bm25_predicate_agrees_with_chroma_on_every_value_type(tmp_path: Path) -> None:
    """`MetadataFilter.matches` against Chroma's own `where` evaluation, over a grid of field values
    (int, float, bool, str, missing) and filters (equality, any-of, ranges with int/decimal bounds)."""
    from itertools import product

    from ingest.vector_store import ChromaIndex

    values: dict[str, object] = {
        "i1": 1,
        "i2": 2,
        "im2": -2,
        "f1": 1.0,
        "f2": 2.0,
        "f25": 2.5,
        "fm15": -1.5,
        "bt": True,
        "bf": False,
        "s2": "2",
        "sx": "x",
        "missing": None,
    }
    coll = ChromaIndex.open(url=None, path=str(tmp_path / "chroma")).chunks_of("grid", create=True)
    coll.add(
        ids=list(values),
        embeddings=[[1.0, 0.0]] * len(values),
        metadatas=[{"k": v, "n": 0} if v is not None else {"n": 0} for v in values.values()],
    )
    metadata = {cid: ({"k": v, "n": 0} if v is not None else {"n": 0}) for cid, v in values.items()}
    bounds = [2, 2.0, 2.5, -1.5, -2, 1, 0]
    filters: list[dict[str, object]] = [{"k": v} for v in [*bounds, True, False, "2", "x"]]
    filters += [{"k": [1, 2]}, {"k": [2.5, -1.5]}, {"k": ["2", "x"]}, {"k": [True]}]
    filters += [{"k": {op: b}} for op, b in product(("gt", "gte", "lt", "lte"), bounds)]
    filters += [{"k": {"gt": -2, "lte": 2.5}}, {"k": {"gte": 1}, "n": 0}]
    for raw in filters:
        flt = parse_filters(raw)
        assert flt is not None and flt.where is not None
        chroma = set(coll.get(where=flt.where, include=[])["ids"])
        ours = {cid for cid, meta in metadata.items() if flt.matches(meta)}
        assert ours == chroma, raw
