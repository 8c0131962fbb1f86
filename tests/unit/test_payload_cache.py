"""The retriever's payload cache: chunks fetched once by id, bounded, per collection."""

from __future__ import annotations

import pytest

from app.retrieval.retriever import PayloadCache
from ingest.types import Chunk

pytestmark = pytest.mark.unit


class CountingStore:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def get_chunks(self, name: str, chunk_ids: list[str]) -> list[Chunk]:
        self.asked.append(list(chunk_ids))
        return [
            Chunk(c, c.split("::")[0], f"{name}:{c}", {"doc_id": c}) for c in chunk_ids if c != "gone::v::0"
        ]


def test_fetches_only_what_it_has_not_seen() -> None:
    store = CountingStore()
    cache = PayloadCache(store, size=10)  # type: ignore[arg-type]
    assert set(cache.get("c", ["a::v::0", "b::v::0"])) == {"a::v::0", "b::v::0"}
    got = cache.get("c", ["a::v::0", "x::v::0", "gone::v::0"])
    assert store.asked == [["a::v::0", "b::v::0"], ["x::v::0", "gone::v::0"]]
    assert set(got) == {"a::v::0", "x::v::0"}  # a chunk the store no longer has is left out
    assert got["a::v::0"].text == "c:a::v::0"


def test_collections_do_not_share_entries_and_the_size_is_bounded() -> None:
    store = CountingStore()
    cache = PayloadCache(store, size=2)  # type: ignore[arg-type]
    assert cache.get("one", ["a::v::0"])["a::v::0"].text == "one:a::v::0"
    assert cache.get("two", ["a::v::0"])["a::v::0"].text == "two:a::v::0"
    cache.get("two", ["b::v::0"])  # evicts the oldest entry ("one", a)
    cache.get("one", ["a::v::0"])
    assert store.asked[-1] == ["a::v::0"]
