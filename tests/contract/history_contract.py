"""What every `HistoryStore` must do, as a mixin of tests (haystack's document-store test style).

A test class inherits `HistoryStoreContract` and provides `make_store(ttl_s=..., max_turns=...)`, a
fixture returning a factory whose stores all share one backend (same SQLite file, same Redis prefix).
The `store` fixture here is `make_store()` with roomy defaults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.history.base import HistoryStore, Turn

StoreFactory = Callable[..., Awaitable[HistoryStore]]


def turn(content: str, role: str = "user", **metadata: Any) -> Turn:
    return Turn(role=role, content=content, created_at=time.time(), metadata=metadata)


class HistoryStoreContract:
    @pytest.fixture
    async def store(self, make_store: StoreFactory) -> HistoryStore:
        return await make_store()

    async def test_is_a_history_store(self, store: HistoryStore) -> None:
        assert isinstance(store, HistoryStore)

    async def test_ping(self, store: HistoryStore) -> None:
        assert await store.ping() is True

    async def test_unknown_conversation_is_none(self, store: HistoryStore) -> None:
        assert await store.get("never-seen") is None

    async def test_append_then_get_keeps_order(self, store: HistoryStore) -> None:
        first = [turn("hello"), turn("hi there", role="assistant")]
        second = [turn("and then?"), turn("then this", role="assistant")]
        await store.append("c1", first)
        await store.append("c1", second)
        assert await store.get("c1") == first + second

    async def test_conversations_are_separate(self, store: HistoryStore) -> None:
        await store.append("a", [turn("for a")])
        await store.append("b", [turn("for b")])
        assert [t.content for t in await store.get("a") or []] == ["for a"]
        assert [t.content for t in await store.get("b") or []] == ["for b"]

    async def test_append_nothing_creates_nothing(self, store: HistoryStore) -> None:
        await store.append("empty", [])
        assert await store.get("empty") is None

    async def test_delete(self, store: HistoryStore) -> None:
        await store.append("c1", [turn("x")])
        assert await store.delete("c1") is True
        assert await store.get("c1") is None
        assert await store.delete("c1") is False
        assert await store.delete("never-seen") is False

    async def test_max_turns_keeps_newest(self, make_store: StoreFactory) -> None:
        store = await make_store(max_turns=3)
        await store.append("c1", [turn(f"m{i}") for i in range(2)])
        await store.append("c1", [turn(f"m{i}") for i in range(2, 5)])
        assert [t.content for t in await store.get("c1") or []] == ["m2", "m3", "m4"]
        # One batch larger than max_turns is trimmed too.
        await store.append("c2", [turn(f"n{i}") for i in range(7)])
        assert [t.content for t in await store.get("c2") or []] == ["n4", "n5", "n6"]

    async def test_metadata_round_trip(self, store: HistoryStore) -> None:
        original = Turn(
            role="assistant",
            content="Réponse — 答案 🚀",
            created_at=1700000000.123456,
            metadata={
                "response_id": "resp-1",
                "prompt": "answer@v1",
                "citations": [{"chunk_id": "doc:1", "score": 0.5, "span": [0, 12]}],
                "nested": {"deep": {"ok": True, "none": None, "ünï": "cødé"}},
            },
        )
        await store.append("c1", [original])
        assert await store.get("c1") == [original]

    async def test_ttl_expiry(self, make_store: StoreFactory) -> None:
        store = await make_store(ttl_s=1)
        await store.append("c1", [turn("soon gone")])
        assert await store.get("c1") is not None
        await asyncio.sleep(1.6)
        assert await store.get("c1") is None
        assert await store.delete("c1") is False

    async def test_append_refreshes_ttl(self, make_store: StoreFactory) -> None:
        store = await make_store(ttl_s=2)
        await store.append("c1", [turn("one")])
        await asyncio.sleep(1.2)
        await store.append("c1", [turn("two")])
        await asyncio.sleep(1.2)  # 2.4s after the first append: alive only because the TTL was refreshed
        assert [t.content for t in await store.get("c1") or []] == ["one", "two"]

    async def test_concurrent_appends_lose_nothing(self, make_store: StoreFactory) -> None:
        store = await make_store(max_turns=1000)
        tasks = 50

        async def one_exchange(i: int) -> None:
            await store.append("busy", [turn(f"q{i}"), turn(f"a{i}", role="assistant")])

        await asyncio.gather(*(one_exchange(i) for i in range(tasks)))
        contents = [t.content for t in await store.get("busy") or []]
        assert len(contents) == 2 * tasks
        assert sorted(contents) == sorted([f"q{i}" for i in range(tasks)] + [f"a{i}" for i in range(tasks)])
        # Each append is atomic: a question is immediately followed by its own answer.
        for question, answer in zip(contents[::2], contents[1::2], strict=True):
            assert question.startswith("q") and answer == "a" + question[1:]

    async def test_new_instance_sees_data(self, make_store: StoreFactory) -> None:
        first = await make_store()
        await first.append("c1", [turn("persisted", tag="ü")])
        await first.aclose()
        second = await make_store()
        turns = await second.get("c1")
        assert turns is not None and turns[0].content == "persisted" and turns[0].metadata == {"tag": "ü"}
