"""Fixtures for tests that need a real service (Redis, PostgreSQL), shared by every test package.

A missing service skips its tests loudly on a laptop, but fails them in CI (`CI=true`), where a skip
would let a broken backend pass unnoticed. Import with `from tests.conftest_services import *`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import uuid4

import pytest
import redis
import sqlalchemy as sa

from app.db import make_engine, masked

__all__ = ["postgres_url", "redis_url", "redis_key_prefix", "require_service", "temporary_postgres_database"]

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Read at import: tests/conftest.py imports this module, then clears every RAGSERVER_ variable.
TEST_POSTGRES_URL = os.environ.get("RAGSERVER_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)


def require_service(name: str, reachable: bool, detail: str = "") -> None:
    """Skip the calling test when `name` is unreachable, or fail it when the env var CI is "true"."""
    if reachable:
        return
    message = f"{name} IS NOT REACHABLE{f' ({detail})' if detail else ''}: its integration tests did not run"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true requires every service)", pytrace=False)
    pytest.skip(message)


def _redis_answers(url: str) -> tuple[bool, str]:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping()), url
    except (redis.RedisError, OSError) as exc:
        return False, f"{url}: {exc}"
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis for tests (`RAGSERVER_TEST_REDIS_URL`, default the local one)."""
    url = os.environ.get("RAGSERVER_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    reachable, detail = _redis_answers(url)
    require_service("Redis", reachable, detail)
    return url


@pytest.fixture
def redis_key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted after the test."""
    prefix = f"ragserver-test:{uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def temporary_postgres_database(server_url: str) -> Iterator[str]:
    """Create an empty database `ragserver_test_<hex>` on the server of `server_url`, yield its URL, and
    drop it afterwards (FORCE: connections a failed test left open do not keep it alive)."""
    name = f"ragserver_test_{uuid4().hex}"
    # CREATE/DROP DATABASE cannot run inside a transaction.
    engine = make_engine(server_url)
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


def _postgres_answers(url: str) -> tuple[bool, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True, url
    except sa.exc.SQLAlchemyError as exc:
        return False, f"{masked(url)}: {exc.__cause__ or exc}"
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh database on the real PostgreSQL for tests, dropped at the end of the session
    (server from `RAGSERVER_TEST_POSTGRES_URL`, default the local one with trust auth)."""
    reachable, detail = _postgres_answers(TEST_POSTGRES_URL)
    require_service("PostgreSQL", reachable, detail)
    with temporary_postgres_database(TEST_POSTGRES_URL) as url:
        yield url


def emptied_tables(url: str, *tables: sa.Table) -> str:
    """`url`'s database migrated, with `tables` emptied (children first): a test's clean start on the
    session's one PostgreSQL database."""
    from app.db import migrate

    migrate(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(sa.delete(table))
    finally:
        engine.dispose()
    return url


@contextmanager
def moto_s3() -> Iterator[str]:
    """An S3 endpoint on loopback (moto's ThreadedMotoServer); yields its URL. Credentials are the
    caller's to set (AWS_ACCESS_KEY_ID=test, ...)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
