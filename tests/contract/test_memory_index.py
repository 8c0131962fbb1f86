"""The `VectorIndex` contract against `MemoryIndex`, and the Chroma behaviours the contract leaves open.

The second part pins what was checked against embedded Chroma 1.5 when the index was written (row order,
metadata merging on upsert, a fixed dimension, integer truncation at 64 bits), so a unit test of the
layers above sees what production would.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from app.container import Container
from app.settings import Settings
from ingest.filters import parse_filters
from ingest.memory_index import MEMORY_URL, MemoryIndex
from ingest.types import Chunk
from ingest.vector_index import VectorIndex
from tests.contract.vector_index_contract import VectorIndexContract, chunk, record, unit

pytestmark = pytest.mark.unit


class TestMemoryIndex(VectorIndexContract):
    @pytest.fixture(scope="class")
    def index(self) -> VectorIndex:
        # One index for the class, as the Chroma suites share one store: each test names its own collections.
        return MemoryIndex()


def test_rows_keep_insertion_order_and_an_upsert_keeps_its_place() -> None:
    index = MemoryIndex()
    index.ensure_collection("c")
    index.put_documents("c", [record(d, 1) for d in ("c", "a", "b")])
    index.put_documents("c", [record("c", 2)])
    index.delete_documents("c", ["a"])
    index.put_documents("c", [record("a", 1)])
    assert [r.doc_id for r in index.iter_documents("c", page=2)] == ["c", "b", "a"]
    assert [r.doc_id for r in index.list_documents("c", limit=2, offset=1)] == ["b", "a"]
    assert index.get_documents("c", ["c"])["c"].chunks == 2


def test_an_upsert_merges_metadata_as_chroma_does() -> None:
    index = MemoryIndex()
    index.ensure_collection("c")
    index.upsert_chunks("c", [chunk("a", 0, "one", team="red", year=2020)], np.stack([unit(1, 0)]))
    replaced = Chunk("a::v1::0", "a", "two", {"doc_id": "a", "team": "blue", "year": None})
    index.upsert_chunks("c", [replaced], np.stack([unit(0, 1)]))
    got = index.get_chunks("c", ["a::v1::0"])[0]
    assert got.text == "two" and got.metadata["team"] == "blue" and got.metadata["version"] == "v1"
    assert "year" not in got.metadata  # None removes a key; a missing key keeps its old value
    assert index.nearest("c", unit(0, 1), 1)[0].score == pytest.approx(1.0)


def test_what_chroma_refuses_is_refused_before_anything_changes() -> None:
    index = MemoryIndex()
    index.ensure_collection("c")
    index.upsert_chunks("c", [chunk("a", 0, "one")], np.stack([unit(1, 0)]))
    with pytest.raises(ValueError):
        index.upsert_chunks("c", [chunk("b", 0, "two")], np.stack([unit(1, 0, 0)]))  # the dimension is 2
    with pytest.raises(ValueError):
        index.upsert_chunks("c", [chunk("b", 0, "x"), chunk("b", 0, "y")], np.stack([unit(1, 0)] * 2))
    with pytest.raises(ValueError):
        index.upsert_chunks("c", [Chunk("b::v1::0", "b", "x", {"nested": {"a": 1}})], np.stack([unit(1, 0)]))
    for bad in (lambda: index.get_chunks("c", []), lambda: index.nearest("c", unit(1, 0), 0)):
        with pytest.raises(ValueError):
            bad()
    assert index.chunk_ids("c") == {"a::v1::0"}


def test_integer_fields_see_decimal_bounds_as_rust_casts_them() -> None:
    index = MemoryIndex()
    index.ensure_collection("c")
    index.upsert_chunks("c", [chunk("a", 0, "x", big=2**63 - 1, tags=["x"])], np.stack([unit(1, 0)]))
    saturated, scalar = parse_filters({"big": {"gte": 1e19}}), parse_filters({"tags": "x"})
    assert saturated is not None and scalar is not None
    assert index.matching_ids("c", saturated)  # the bound saturates at the i64 maximum
    assert not index.matching_ids("c", scalar)  # a list never equals a scalar


def test_concurrent_writers_and_readers() -> None:
    index = MemoryIndex()
    index.ensure_collection("c")

    def work(n: int) -> None:
        for i in range(50):
            index.upsert_chunks("c", [chunk(f"d{n}", i, "t")], np.stack([unit(1, n + i)]))
            index.nearest("c", unit(1, 0), 5, parse_filters({"document_id": f"d{n}"}))
            list(index.iter_chunks("c", page=7))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert index.count_chunks("c") == 200


def test_memory_url_selects_the_memory_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGSERVER_CHROMA__URL", MEMORY_URL)
    container = Container(Settings(data_dir=tmp_path))
    assert isinstance(container.store, MemoryIndex)
    assert not container.settings.chroma_path.exists()  # nothing written to disk
