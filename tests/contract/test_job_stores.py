"""The `JobStore` contract against SQLite and against real Redis."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from app.jobs.base import JobStore
from app.jobs.factory import build_job_store
from app.jobs.redis_jobs import RedisJobStore
from app.jobs.sqlite_jobs import SQLiteJobStore
from app.settings import Settings
from tests.contract.jobs_contract import JobStoreContract, StoreFactory, make_job

pytestmark = pytest.mark.integration


class TestSQLiteJobs(JobStoreContract):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "data" / "ragserver.sqlite3"

    @pytest.fixture
    async def make_store(self, db_path: Path) -> AsyncIterator[StoreFactory]:
        opened: list[SQLiteJobStore] = []

        async def factory() -> JobStore:
            store = SQLiteJobStore(db_path)
            opened.append(store)
            return store

        yield factory
        for store in opened:
            await store.aclose()

    async def test_created_job_is_committed_for_other_connections(
        self, store: JobStore, db_path: Path
    ) -> None:
        # What a crash right after create() would leave: the rows, visible to any new connection.
        job = make_job()
        await store.create(job)
        with closing(sqlite3.connect(db_path)) as conn:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM ingest_job_files WHERE job_id = ?", (job.job_id,)
            ).fetchone()
        assert count == 3

    async def test_a_database_from_before_job_owners_is_upgraded(self, db_path: Path) -> None:
        # The schema as it was before jobs had an owner, with one job still queued.
        db_path.parent.mkdir(parents=True)
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.executescript(
                "CREATE TABLE ingest_jobs (job_id TEXT PRIMARY KEY, collection TEXT NOT NULL,"
                " status TEXT NOT NULL, metadata_json TEXT NOT NULL, created_at REAL NOT NULL,"
                " updated_at REAL NOT NULL);"
                "INSERT INTO ingest_jobs VALUES ('old', 'kb', 'queued', '{}', 1.0, 1.0);"
            )
        store = SQLiteJobStore(db_path)
        try:
            [old] = await store.list_unfinished()
            assert (old.job_id, old.owner) == ("old", "")
            job = make_job()
            await store.create(job)
            assert await store.get(job.job_id) == job
        finally:
            await store.aclose()
        SQLiteJobStore(db_path)  # opening an upgraded file again is a no-op

    async def test_shares_the_file_with_history(self, db_path: Path) -> None:
        from app.history.base import Turn
        from app.history.sqlite_history import SQLiteHistoryStore

        history = SQLiteHistoryStore(db_path, ttl_s=60, max_turns=5)
        jobs = SQLiteJobStore(db_path)
        try:
            await history.append("c", [Turn("user", "hi", 0.0)])
            job = make_job()
            await jobs.create(job)
            assert await jobs.get(job.job_id) == job
            assert await history.get("c") == [Turn("user", "hi", 0.0)]
        finally:
            await history.aclose()
            await jobs.aclose()


class TestRedisJobs(JobStoreContract):
    @pytest.fixture
    async def make_store(self, redis_url: str, redis_key_prefix: str) -> AsyncIterator[StoreFactory]:
        opened: list[RedisJobStore] = []

        async def factory() -> JobStore:
            store = RedisJobStore(redis_url, key_prefix=f"{redis_key_prefix}job:")
            opened.append(store)
            return store

        yield factory
        for store in opened:
            await store.aclose()

    async def test_deleted_job_key_drops_out_of_unfinished(self, store: JobStore) -> None:
        assert isinstance(store, RedisJobStore)
        job = make_job()
        await store.create(job)
        await store._redis.delete(store._job_key(job.job_id))
        assert await store.list_unfinished() == []
        assert await store._redis.scard(store._unfinished_key) == 0


async def test_factory_picks_sqlite_by_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh" / "data", history={"redis_url": None})
    store = build_job_store(settings)
    try:
        assert isinstance(store, SQLiteJobStore) and store.path == settings.sqlite_path
    finally:
        await store.aclose()


async def test_factory_picks_redis_when_configured(tmp_path: Path, redis_url: str) -> None:
    store = build_job_store(Settings(data_dir=tmp_path, history={"redis_url": redis_url}))
    try:
        assert isinstance(store, RedisJobStore) and await store.ping() is True
    finally:
        await store.aclose()
