"""The `VectorIndex` contract (haystack's `testing/document_store.py` style): every backend passes it.

Subclasses provide an `index` fixture; each test works in collections of its own (`self.name(...)`),
so one Chroma server can serve the whole session. Vectors are tiny hand-made ones: the contract is
about storage, search order and filter semantics, not about a model.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from ingest.filters import parse_filters
from ingest.types import Chunk, doc_id_of, make_chunk_id
from ingest.vector_index import (
    CollectionNotFound,
    DocumentRecord,
    InvalidCollectionName,
    VectorIndex,
    split_store_name,
    store_name,
)

# (filter, metadata of one chunk, whether it matches): the filter language's semantics, quirks of
# the reference backend (Chroma) included, which every backend must reproduce.
META: dict[str, Any] = {
    "source": "/data/a.pdf",
    "title": "A",
    "ingested_at": 1_700_000_000.5,
    "page": 3,
    "team": "blue",
    "year": 2021,
    "public": True,
}
FILTER_CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"document_id": "d1"}, META, True),
    ({"document_id": "d1"}, {**META, "doc_id": "d2"}, False),
    ({"source": ["/data/a.pdf", "/data/b.pdf"]}, META, True),
    ({"source": ["/data/a.pdf", "/data/b.pdf"]}, {**META, "source": "/data/c.pdf"}, False),
    ({"team": "blue", "year": 2021}, META, True),
    ({"team": "blue", "year": 2021}, {**META, "team": "red"}, False),
    ({"team": "blue", "year": 2021}, {**META, "year": 2019}, False),
    ({"team": "blue"}, {"title": "no team"}, False),  # a missing key never matches
    ({"year": "2021"}, META, False),  # types are strict: a string never equals a number
    ({"public": 1}, META, False),  # nor a boolean a number
    ({"public": True}, META, True),
    ({"page": True}, META, False),
    ({"page": 3.0}, META, True),
    ({"ingested_at": {"gte": 1_700_000_000}}, META, True),
    ({"ingested_at": {"gt": 1_700_000_001}}, META, False),
    ({"ingested_at": {"lte": "2023-11-14T22:13:21Z"}}, META, True),
    ({"ingested_at": {"lt": "2023-11-14T22:13:00"}}, META, False),  # a naive time is UTC
    ({"source": "/data/a.pdf", "page": {"gte": 2, "lte": 4}}, META, True),
    ({"source": "/data/a.pdf", "page": {"gte": 2, "lte": 4}}, {**META, "page": 5}, False),
    ({"source": "/data/a.pdf", "page": {"gte": 2, "lte": 4}}, {**META, "page": "3"}, False),
    # An integer field sees a decimal bound truncated toward zero.
    ({"page": 3.7}, META, True),
    ({"page": {"gte": 3.5}}, META, True),
    ({"page": {"gt": 2.5}}, {**META, "page": 2}, False),
    ({"page": {"lt": -1.5}}, {**META, "page": -2}, True),
    ({"score": 3}, {"score": 3.5}, False),
    ({"score": {"gt": 3}}, {"score": 3.5}, True),
]


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def chunk(doc_id: str, n: int, text: str, version: str = "v1", **meta: Any) -> Chunk:
    metadata = {"doc_id": doc_id, "version": version, "chunk_index": n, "source": f"{doc_id}.txt", **meta}
    return Chunk(make_chunk_id(doc_id, version, n), doc_id, text, metadata)


def record(doc_id: str, chunks: int, version: str = "v1", **meta: Any) -> DocumentRecord:
    return DocumentRecord(doc_id, f"{doc_id}.txt", doc_id.title(), "hash", version, chunks, 1.0, meta)


class VectorIndexContract:
    """Subclasses provide an `index` fixture (a `VectorIndex`)."""

    def name(self, label: str = "c") -> str:
        return f"{label}-{uuid.uuid4().hex[:10]}"

    def filled(self, index: VectorIndex) -> str:
        """A collection with three documents: a (2 chunks), b, c."""
        name = self.name()
        index.ensure_collection(name)
        chunks = [
            chunk("a", 0, "alpha one", team="red"),
            chunk("a", 1, "alpha two", team="red"),
            chunk("b", 0, "bravo", team="blue"),
            chunk("c", 0, "charlie", team="blue"),
        ]
        vectors = np.stack([unit(1, 0, 0), unit(1, 0.2, 0), unit(0, 1, 0), unit(0, 0, 1)])
        index.upsert_chunks(name, chunks, vectors)
        index.put_documents(name, [record("a", 2), record("b", 1), record("c", 1, team="blue")])
        return name

    def test_is_a_vector_index(self, index: VectorIndex) -> None:
        assert isinstance(index, VectorIndex)
        assert index.heartbeat()

    def test_collections_are_created_listed_and_dropped(self, index: VectorIndex) -> None:
        name = self.name()
        assert not index.has_collection(name)
        index.ensure_collection(name)
        index.ensure_collection(name)  # idempotent
        assert index.has_collection(name) and name in index.list_collections()
        index.drop_collection(name)
        assert not index.has_collection(name) and name not in index.list_collections()
        index.drop_collection(name)  # dropping a missing collection is fine

    @pytest.mark.parametrize("bad", ["", "-x", "a b", "nl\n", "x" * 64, "a/b", "é"])
    def test_invalid_names_are_refused(self, index: VectorIndex, bad: str) -> None:
        with pytest.raises(InvalidCollectionName):
            index.ensure_collection(bad)

    def test_names_like_internal_ones_are_collections_of_their_own(self, index: VectorIndex) -> None:
        # `x__docs` once named x's record collection; `x__docs` made before `x` broke `x`.
        base = self.name("n")
        for name in (f"{base}__docs", base, f"{base}__docs__docs"):
            index.ensure_collection(name)
            index.upsert_chunks(name, [chunk(name, 0, f"text of {name}")], np.stack([unit(1, 0, 0)]))
            index.put_documents(name, [record(name, 1)])
        for name in (f"{base}__docs", base, f"{base}__docs__docs"):
            assert index.count_chunks(name) == 1 and index.count_documents(name) == 1
            assert [r.doc_id for r in index.list_documents(name)] == [name]
            assert [h.doc_id for h in index.nearest(name, unit(1, 0, 0), 5)] == [name]
            assert name in index.list_collections()
        index.drop_collection(base)
        assert index.count_documents(f"{base}__docs") == 1 and not index.has_collection(base)

    def test_tenant_store_names_never_meet(self, index: VectorIndex) -> None:
        # A default-tenant collection `t`, tenant t's `docs` and `hr`, and tenant u's `hr`: four stores.
        t, u = self.name("t").replace("_", "-").lower(), self.name("u").replace("_", "-").lower()
        names = [store_name("default", t), store_name(t, "docs"), store_name(t, "hr"), store_name(u, "hr")]
        assert len(set(names)) == 4
        for i, name in enumerate(names):
            index.ensure_collection(name)
            index.upsert_chunks(name, [chunk(f"d{i}", 0, f"text {i}")], np.stack([unit(1, 0, 0)]))
            index.put_documents(name, [record(f"d{i}", 1)])
        for i, name in enumerate(names):
            assert [r.doc_id for r in index.list_documents(name)] == [f"d{i}"]
            assert [h.doc_id for h in index.nearest(name, unit(1, 0, 0), 5)] == [f"d{i}"]
        assert set(names) <= set(index.list_collections())
        assert all(split_store_name(n) for n in index.list_collections())
        index.drop_collection(names[2])
        assert not index.has_collection(names[2]) and index.count_documents(names[3]) == 1
        assert index.count_documents(names[0]) == 1 and index.count_documents(names[1]) == 1

    @pytest.mark.parametrize("bad", ["default.hr", "Acme.hr", "a.b.c", ".hr", "acme.", "ac_me.hr"])
    def test_malformed_store_names_are_refused(self, index: VectorIndex, bad: str) -> None:
        with pytest.raises(InvalidCollectionName):
            index.ensure_collection(bad)

    def test_a_missing_collection_is_not_found(self, index: VectorIndex) -> None:
        name = self.name("missing")
        for call in (
            lambda: index.count_chunks(name),
            lambda: index.count_documents(name),
            lambda: index.nearest(name, unit(1, 0, 0), 3),
            lambda: index.chunk_ids(name),
        ):
            with pytest.raises(CollectionNotFound):
                call()
        assert index.get_documents(name, ["a"]) == {}
        assert not index.has_collection(name)  # reading never creates it

    def test_documents_round_trip(self, index: VectorIndex) -> None:
        name = self.filled(index)
        got = index.get_documents(name, ["c", "a", "zzz"])
        assert set(got) == {"a", "c"}
        assert got["c"] == record("c", 1, team="blue")
        assert index.count_documents(name) == 3
        listed = index.list_documents(name, limit=2, offset=0) + index.list_documents(name, limit=2, offset=2)
        assert sorted(r.doc_id for r in listed) == ["a", "b", "c"]
        assert sorted(r.doc_id for r in index.iter_documents(name, page=1)) == ["a", "b", "c"]

    def test_chunks_round_trip(self, index: VectorIndex) -> None:
        name = self.filled(index)
        assert index.count_chunks(name) == 4
        ids = [make_chunk_id("c", "v1", 0), make_chunk_id("a", "v1", 1), "nope::v1::0"]
        got = index.get_chunks(name, ids)
        assert [c.chunk_id for c in got] == ids[:2]  # in the order asked, missing ones left out
        assert got[0].text == "charlie" and got[0].metadata["team"] == "blue" and got[0].doc_id == "c"
        assert {c.chunk_id for c in index.iter_chunks(name, page=3)} == index.chunk_ids(name)
        assert len(index.chunk_ids(name)) == 4

    def test_upsert_replaces_a_chunk_by_id(self, index: VectorIndex) -> None:
        name = self.filled(index)
        index.upsert_chunks(name, [chunk("b", 0, "bravo again", team="blue")], np.stack([unit(0, 1, 0)]))
        assert index.count_chunks(name) == 4
        assert index.get_chunks(name, [make_chunk_id("b", "v1", 0)])[0].text == "bravo again"

    def test_stale_versions_and_deleted_documents_lose_their_chunks(self, index: VectorIndex) -> None:
        name = self.filled(index)
        index.upsert_chunks(name, [chunk("a", 0, "alpha v2", version="v2")], np.stack([unit(1, 0, 0)]))
        removed = index.delete_stale_chunks(name, {"a": "v2", "b": "v1"})
        assert sorted(removed) == [make_chunk_id("a", "v1", 0), make_chunk_id("a", "v1", 1)]
        removed = index.delete_documents(name, ["b", "unknown"])
        assert removed == [make_chunk_id("b", "v1", 0)]
        assert index.chunk_ids(name) == {make_chunk_id("a", "v2", 0), make_chunk_id("c", "v1", 0)}
        assert set(index.get_documents(name, ["a", "b", "c"])) == {"a", "c"}

    def test_nearest_ranks_by_cosine_and_returns_ids_only(self, index: VectorIndex) -> None:
        name = self.filled(index)
        hits = index.nearest(name, unit(1, 0.05, 0), 10)
        assert [h.chunk_id for h in hits][:2] == [make_chunk_id("a", "v1", 0), make_chunk_id("a", "v1", 1)]
        assert len(hits) == 4  # k above the collection size returns everything
        assert hits[0].score == pytest.approx(float(unit(1, 0.05, 0) @ unit(1, 0, 0)), abs=1e-4)
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
        assert all(h.doc_id == doc_id_of(h.chunk_id) and not h.text and not h.metadata for h in hits)
        blue = index.nearest(name, unit(1, 0, 0), 10, parse_filters({"team": "blue"}))
        assert {h.doc_id for h in blue} == {"b", "c"}

    def test_nearest_in_an_empty_collection_is_empty(self, index: VectorIndex) -> None:
        name = self.name()
        index.ensure_collection(name)
        assert index.nearest(name, unit(1, 0, 0), 5) == []

    def test_filter_semantics(self, index: VectorIndex) -> None:
        name = self.name("filters")
        index.ensure_collection(name)
        rows = [{"doc_id": "d1", **meta} for _, meta, _ in FILTER_CASES]
        chunks = [Chunk(f"d1::v{i}::0", "d1", f"row {i}", meta) for i, meta in enumerate(rows)]
        index.upsert_chunks(name, chunks, np.stack([unit(1, 0, 0)] * len(chunks)))
        for i, (raw, _, expected) in enumerate(FILTER_CASES):
            flt = parse_filters(raw)
            assert flt is not None
            assert (chunks[i].chunk_id in index.matching_ids(name, flt)) is expected, raw
