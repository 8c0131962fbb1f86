"""The `JobStore` contract and the schema migrations, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from app.db import current_revision, head_revision, make_engine, migrate
from app.db.tables import ingest_job_files, ingest_jobs, metadata
from app.jobs.base import Job, JobFile, JobStore
from app.jobs.factory import build_job_store
from app.jobs.sql_jobs import SQLJobStore
from app.settings import Settings
from tests.conftest_services import emptied_tables, temporary_postgres_database
from tests.contract.jobs_contract import JobStoreContract, StoreFactory, make_job

pytestmark = pytest.mark.integration


class SQLStoreTests(JobStoreContract):
    """The contract, plus what the schema migrations must do on any SQL backend.

    A subclass provides `database_url` (shared by the contract's stores, no jobs in it) and `fresh_url`
    (a database nothing has touched).
    """

    @pytest.fixture
    async def make_store(self, database_url: str) -> AsyncIterator[StoreFactory]:
        opened: list[SQLJobStore] = []

        async def factory() -> JobStore:
            store = SQLJobStore(database_url)
            opened.append(store)
            return store

        yield factory
        for store in opened:
            await store.aclose()

    async def test_migrating_twice_is_a_no_op(self, fresh_url: str) -> None:
        head = head_revision()
        assert head is not None and migrate(fresh_url) == head
        store = SQLJobStore(fresh_url)  # migrates again, at start-up
        try:
            job = make_job()
            await store.create(job)
            assert migrate(fresh_url) == head
            assert await store.get(job.job_id) == job
            with store.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [(head,)]
        finally:
            await store.aclose()

    def test_migrations_create_the_tables_the_code_queries(self, fresh_url: str) -> None:
        migrate(fresh_url)
        engine = make_engine(fresh_url)
        try:
            with engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        finally:
            engine.dispose()

    def test_replicas_starting_together_migrate_once(self, fresh_url: str) -> None:
        # Processes, like replicas (in one process, migrations take turns on a lock of their own).
        # Without the database's lock, each would find no tables and try to create them: all but one fail.
        context = multiprocessing.get_context("fork")  # no re-imports: the start-ups overlap
        barrier, results = context.Barrier(3), context.Queue()
        replicas = [
            context.Process(target=_start_replica, args=(barrier, fresh_url, results)) for _ in range(3)
        ]
        for replica in replicas:
            replica.start()
        try:
            assert [results.get(timeout=60) for _ in replicas] == [head_revision()] * 3
        finally:
            for replica in replicas:
                replica.join(timeout=10)


def _start_replica(barrier: Any, url: str, results: Any) -> None:
    """What each replica's start-up does, once all of them are ready to; puts the revision or the error."""
    barrier.wait()
    try:
        results.put(migrate(url))
    except Exception as exc:
        results.put(repr(exc))


class TestSQLiteJobs(SQLStoreTests):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "data" / "ragserver.sqlite3"

    @pytest.fixture
    def database_url(self, db_path: Path) -> str:
        return f"sqlite:///{db_path}"

    @pytest.fixture
    def fresh_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'fresh' / 'ragserver.sqlite3'}"

    async def test_connections_are_durable_and_wait_for_the_write_lock(self, store: JobStore) -> None:
        assert isinstance(store, SQLJobStore)
        with store.engine.connect() as conn:
            pragmas = [
                conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            ]
        assert pragmas == ["wal", 2, 30_000]  # synchronous 2 = FULL

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

    async def test_a_database_from_before_job_owners_is_upgraded(
        self, db_path: Path, database_url: str
    ) -> None:
        # The schema as it was before jobs had an owner, with one job still queued.
        db_path.parent.mkdir(parents=True)
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.executescript(
                "CREATE TABLE ingest_jobs (job_id TEXT PRIMARY KEY, collection TEXT NOT NULL,"
                " status TEXT NOT NULL, metadata_json TEXT NOT NULL, created_at REAL NOT NULL,"
                " updated_at REAL NOT NULL);"
                "INSERT INTO ingest_jobs VALUES ('old', 'kb', 'queued', '{}', 1.0, 1.0);"
            )
        store = SQLJobStore(database_url)
        try:
            [old] = await store.list_unfinished()
            assert (old.job_id, old.owner, old.files) == ("old", "", [])
            job = make_job()
            await store.create(job)
            assert await store.get(job.job_id) == job
            assert current_revision(store.engine) == head_revision()
        finally:
            await store.aclose()

    @pytest.mark.parametrize("with_owner", [True, False], ids=["with-owner", "before-owners"])
    async def test_a_database_from_before_alembic_is_adopted(
        self, db_path: Path, database_url: str, with_owner: bool
    ) -> None:
        # The tables the SQLite job store used to create itself, holding an unfinished and a finished job.
        owner_column = ", owner TEXT NOT NULL DEFAULT ''" if with_owner else ""
        db_path.parent.mkdir(parents=True)
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.executescript(
                "CREATE TABLE ingest_jobs (job_id TEXT PRIMARY KEY, collection TEXT NOT NULL,"
                " status TEXT NOT NULL, metadata_json TEXT NOT NULL, created_at REAL NOT NULL,"
                f" updated_at REAL NOT NULL{owner_column});"
                "CREATE INDEX ingest_jobs_by_status ON ingest_jobs (status, created_at);"
                "CREATE TABLE ingest_job_files (job_id TEXT NOT NULL, document_id TEXT NOT NULL,"
                " position INTEGER NOT NULL, filename TEXT NOT NULL, stored_path TEXT NOT NULL,"
                " status TEXT NOT NULL, error TEXT, chunks INTEGER NOT NULL,"
                " PRIMARY KEY (job_id, document_id));"
                "INSERT INTO ingest_jobs (job_id, collection, status, metadata_json, created_at, updated_at)"
                """ VALUES ('running', 'kb', 'running', '{"by": "Zoë"}', 2.0, 3.0),"""
                " ('done', 'kb', 'succeeded', '{}', 1.0, 1.0);"
                "INSERT INTO ingest_job_files VALUES"
                " ('running', 'b', 1, 'b.txt', '/up/b.txt', 'queued', NULL, 0),"
                " ('running', 'a', 0, 'a.txt', '/up/a.txt', 'succeeded', NULL, 4),"
                " ('done', 'c', 0, 'c.txt', '/up/c.txt', 'failed', 'unreadable', 0);"
            )
        store = SQLJobStore(database_url)
        try:
            files = [
                JobFile("a", "a.txt", "/up/a.txt", "succeeded", None, 4),
                JobFile("b", "b.txt", "/up/b.txt", "queued", None, 0),
            ]
            assert await store.list_unfinished() == [
                Job("running", "kb", "running", files, {"by": "Zoë"}, 2.0, 3.0, owner="")
            ]
            done = await store.get("done")
            assert done is not None and done.files == [
                JobFile("c", "c.txt", "/up/c.txt", "failed", "unreadable")
            ]
            assert current_revision(store.engine) == head_revision()
            indexes = sa.inspect(store.engine).get_indexes("ingest_jobs")
            assert [index["name"] for index in indexes] == ["ingest_jobs_by_status"]
        finally:
            await store.aclose()

    async def test_shares_the_file_with_history(self, db_path: Path, database_url: str) -> None:
        from app.history.base import Turn
        from app.history.sqlite_history import SQLiteHistoryStore

        history = SQLiteHistoryStore(db_path, ttl_s=60, max_turns=5)
        jobs = SQLJobStore(database_url)
        try:
            await history.append("c", [Turn("user", "hi", 0.0)])
            job = make_job()
            await jobs.create(job)
            assert await jobs.get(job.job_id) == job
            assert await history.get("c") == [Turn("user", "hi", 0.0)]
        finally:
            await history.aclose()
            await jobs.aclose()


class TestPostgresJobs(SQLStoreTests):
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        # One database for the session; each test starts without jobs.
        return emptied_tables(postgres_url, ingest_job_files, ingest_jobs)

    @pytest.fixture
    def fresh_url(self, postgres_url: str) -> Iterator[str]:
        with temporary_postgres_database(postgres_url) as url:
            yield url


def test_postgresql_urls_get_the_psycopg_driver() -> None:
    for url in ("postgresql://u:s3cret@db.example/jobs", "postgres://u:s3cret@db.example/jobs"):
        engine = make_engine(url)  # connects on first use only
        assert engine.url.drivername == "postgresql+psycopg" and engine.url.database == "jobs"


async def test_factory_uses_the_sqlite_file_of_the_history_store(tmp_path: Path) -> None:
    # A Redis URL moves conversation history to Redis; job records stay in the database.
    settings = Settings(data_dir=tmp_path / "fresh" / "data", history={"redis_url": "redis://unused:1/0"})
    store = build_job_store(settings)
    try:
        assert isinstance(store, SQLJobStore)
        assert store.engine.url.database == str(settings.sqlite_path) and settings.sqlite_path.exists()
    finally:
        await store.aclose()


async def test_factory_uses_the_configured_database(tmp_path: Path, postgres_url: str) -> None:
    store = build_job_store(Settings(data_dir=tmp_path, database={"url": postgres_url}))
    try:
        assert isinstance(store, SQLJobStore) and store.engine.dialect.name == "postgresql"
        assert await store.ping() is True
    finally:
        await store.aclose()


def test_database_url_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(data_dir=tmp_path).database_url == f"sqlite:///{tmp_path / 'ragserver.sqlite3'}"
    monkeypatch.setenv("RAGSERVER_DATABASE_URL", "postgresql://u@db/jobs")
    assert Settings(data_dir=tmp_path).database_url == "postgresql://u@db/jobs"


def test_db_upgrade_command(postgres_url: str) -> None:
    from app.cli.main import app

    with temporary_postgres_database(postgres_url) as url:
        # Trust auth ignores the password: here only to show it never reaches the output.
        with_password = sa.make_url(url).set(password="s3cret").render_as_string(hide_password=False)
        result = CliRunner().invoke(app, ["db", "upgrade"], env={"RAGSERVER_DATABASE_URL": with_password})
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output
        last = json.loads(result.output.strip().splitlines()[-1])
        expected = sa.make_url(with_password).set(drivername="postgresql+psycopg")
        assert last == {
            "database": expected.render_as_string(hide_password=True),
            "revision": head_revision(),
        }
        assert ":***@" in last["database"]
        engine = make_engine(url)
        try:
            assert current_revision(engine) == head_revision()
        finally:
            engine.dispose()


def test_db_upgrade_command_reports_an_unreachable_database() -> None:
    from app.cli.main import app

    url = "postgresql://u:s3cret@127.0.0.1:1/jobs"  # nothing listens on port 1
    result = CliRunner().invoke(app, ["db", "upgrade"], env={"RAGSERVER_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "cannot migrate postgresql+psycopg://u:***@127.0.0.1:1/jobs" in result.output
    assert "s3cret" not in result.output
