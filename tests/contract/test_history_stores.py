"""The `HistoryStore` contract against SQLite and against real Redis."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from app.history.base import HistoryStore, HistoryStoreError
from app.history.factory import build_history_store
from app.history.redis_history import RedisHistoryStore
from app.history.sqlite_history import SQLiteHistoryStore
from app.settings import Settings
from tests.contract.history_contract import HistoryStoreContract, StoreFactory, turn

pytestmark = pytest.mark.integration

DEFAULTS = {"ttl_s": 3600, "max_turns": 50}


class TestSQLiteHistory(HistoryStoreContract):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "data" / "ragserver.sqlite3"

    @pytest.fixture
    async def make_store(self, db_path: Path) -> AsyncIterator[StoreFactory]:
        opened: list[SQLiteHistoryStore] = []

        async def factory(**overrides: int) -> HistoryStore:
            store = SQLiteHistoryStore(db_path, **{**DEFAULTS, **overrides})
            opened.append(store)
            return store

        yield factory
        for store in opened:
            await store.aclose()

    async def test_uses_wal(self, store: HistoryStore, db_path: Path) -> None:
        with closing(sqlite3.connect(db_path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    async def test_expired_rows_are_cleaned_lazily(self, make_store: StoreFactory, db_path: Path) -> None:
        store = await make_store(ttl_s=1)
        await store.append("old", [turn("a"), turn("b")])
        await asyncio.sleep(1.3)
        await store.append("new", [turn("c")])  # the sweep on append removes "old"
        with closing(sqlite3.connect(db_path)) as conn:
            ids = {row[0] for row in conn.execute("SELECT conversation_id FROM conversation_turns")}
        assert ids == {"new"}


class TestRedisHistory(HistoryStoreContract):
    @pytest.fixture
    async def make_store(self, redis_url: str, redis_key_prefix: str) -> AsyncIterator[StoreFactory]:
        opened: list[RedisHistoryStore] = []

        async def factory(**overrides: int) -> HistoryStore:
            store = RedisHistoryStore(
                redis_url, key_prefix=f"{redis_key_prefix}conv:", **{**DEFAULTS, **overrides}
            )
            opened.append(store)
            return store

        yield factory
        for store in opened:
            await store.aclose()

    async def test_one_key_per_conversation_with_ttl(
        self, store: HistoryStore, redis_key_prefix: str
    ) -> None:
        assert isinstance(store, RedisHistoryStore)
        await store.append("c1", [turn("x"), turn("y", role="assistant")])
        client = store._redis  # the store's own client: same server, same db
        keys = [k async for k in client.scan_iter(match=f"{redis_key_prefix}*")]
        assert keys == [f"{redis_key_prefix}conv:c1"]
        assert 0 < await client.ttl(keys[0]) <= DEFAULTS["ttl_s"]


async def test_an_unreachable_redis_fails_fast_as_a_history_store_error() -> None:
    from tests.conftest import free_port

    store = RedisHistoryStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5, **DEFAULTS)
    started = time.monotonic()
    try:
        for call in (store.get("c1"), store.append("c1", [turn("x")]), store.delete("c1")):
            with pytest.raises(HistoryStoreError):
                await call
        assert await store.ping() is False
    finally:
        await store.aclose()
    assert time.monotonic() - started < 5


async def test_deployments_sharing_a_redis_database_keep_apart_by_key_prefix(
    tmp_path: Path, redis_url: str, redis_key_prefix: str
) -> None:
    stores = [
        build_history_store(
            Settings(
                data_dir=tmp_path,
                history={"redis_url": redis_url, "key_prefix": f"{redis_key_prefix}{name}:"},
            )
        )
        for name in ("blue", "green")
    ]
    blue, green = stores
    try:
        await blue.append("c1", [turn("blue question")])
        await green.append("c1", [turn("green question")])
        assert [t.content for t in await blue.get("c1") or []] == ["blue question"]
        assert [t.content for t in await green.get("c1") or []] == ["green question"]
        assert await green.delete("c1") is True
        assert await blue.get("c1") is not None
    finally:
        for store in stores:
            await store.aclose()


async def test_factory_picks_sqlite_by_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh" / "data", history={"redis_url": None, "max_turns": 7})
    store = build_history_store(settings)
    try:
        assert isinstance(store, SQLiteHistoryStore)
        assert store.path == settings.sqlite_path and store.max_turns == 7
        assert settings.sqlite_path.exists()
    finally:
        await store.aclose()


async def test_factory_picks_redis_when_configured(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(data_dir=tmp_path, history={"redis_url": redis_url, "ttl_s": 60})
    store = build_history_store(settings)
    try:
        assert isinstance(store, RedisHistoryStore) and store.ttl_s == 60
        assert await store.ping() is True
    finally:
        await store.aclose()
