"""Fixtures for tests that need a real service (Redis, ...), shared by every test package.

A missing service skips its tests loudly on a laptop, but fails them in CI (`CI=true`), where a skip
would let a broken backend pass unnoticed. Import with `from tests.conftest_services import *`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from uuid import uuid4

import pytest
import redis

__all__ = ["redis_url", "redis_key_prefix", "require_service"]

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


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
