"""Shared capacity in tenants' shares, as units: generation slots (a freed slot goes to a tenant within its
share first; one tenant's waiting requests are capped), rate limits that stay on while their Redis is down,
and failed authentications throttled per client address while a valid key keeps working; a key never
makes a key with more than it has."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from fastapi.testclient import TestClient

from app.auth.principal import Principal
from app.auth.rate_limits import RateLimits
from app.services.errors import RateLimited
from app.services.limits import GenerationLimiter
from app.services.metrics import Metrics
from app.settings import LimitSettings, Settings

pytestmark = pytest.mark.unit


async def _holders(limiter: GenerationLimiter, tenant: str, n: int) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(limiter.acquire(tenant)) for _ in range(n)]
    await asyncio.sleep(0)
    return tasks


async def test_a_freed_slot_goes_to_the_tenant_within_its_share_first() -> None:
    limits = LimitSettings(
        max_concurrent_generations=4, max_generations_per_tenant=2, max_waiting_generations=50
    )
    limiter = GenerationLimiter(limits)
    await _holders(limiter, "a", 4)  # alone, a tenant may use every slot
    assert limiter.active == 4
    a_waiting = await _holders(limiter, "a", 3)
    b_waiting = await _holders(limiter, "b", 2)
    assert limiter.waiting == 5
    limiter.release("a")
    await asyncio.sleep(0)
    # b came after a's waiters, yet gets the slot: a holds more than its share.
    assert [t.done() for t in b_waiting] == [True, False]
    assert not any(t.done() for t in a_waiting)
    limiter.release("a")
    await asyncio.sleep(0)
    assert all(t.done() for t in b_waiting)
    limiter.release("a")  # a is at 1 now, within its share again: its first waiter is next
    await asyncio.sleep(0)
    assert [t.done() for t in a_waiting] == [True, False, False]
    for t in a_waiting[1:]:
        t.cancel()
    await asyncio.gather(*a_waiting[1:], return_exceptions=True)
    assert limiter.waiting == 0


async def test_one_tenant_cannot_take_every_waiting_place() -> None:
    limits = LimitSettings(
        max_concurrent_generations=1, max_waiting_generations=10, max_waiting_generations_per_tenant=3
    )
    limiter = GenerationLimiter(limits)
    await _holders(limiter, "a", 1)
    waiting = await _holders(limiter, "a", 3)
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire("a")
    assert refused.value.code == "tenant_busy"
    b = await _holders(limiter, "b", 1)  # another tenant still gets a waiting place
    assert limiter.waiting == 4
    for t in [*waiting, *b]:
        t.cancel()
    await asyncio.gather(*waiting, *b, return_exceptions=True)


async def test_rate_limits_count_in_process_memory_while_redis_is_down() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        auth={"rate_limit_url": "redis://127.0.0.1:1/0", "default_rpm": 3},
    )
    metrics = Metrics()
    limits = RateLimits(settings, metrics)
    principal = Principal(tenant="acme", role="reader", key_id="key_1")
    for _ in range(3):
        await limits.hit_request(principal)
    with pytest.raises(RateLimited):
        await limits.hit_request(principal)
    assert metrics.rate_limit_errors._value.get() >= 1  # counted, and logged


def test_failed_authentication_is_throttled_per_address_while_a_valid_key_works(make_container) -> None:  # type: ignore[no-untyped-def]
    from app.factory import create_app

    container = make_container(
        auth={"mode": "api_key", "max_failed_auth_per_minute": 5}, llm={"provider": "scripted"}
    )
    _, key = container.keys.create(tenant="acme", name="ok", role="reader")
    with TestClient(create_app(container=container)) as client:
        statuses = [
            client.get("/v1/models", headers={"Authorization": f"Bearer rsk_wrong{i}"}).status_code
            for i in range(8)
        ]
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 3
        throttled = client.get("/v1/models")  # no key at all counts too
        assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
        assert throttled.json()["error"]["code"] == "auth_throttled"
        ok = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.text


async def test_a_key_never_makes_a_key_with_more_than_it_has(make_container) -> None:  # type: ignore[no-untyped-def]
    from app.services.errors import Forbidden

    container = make_container(auth={"mode": "api_key", "default_rpm": 100})
    record, _ = container.keys.create(tenant="acme", name="temp-admin", role="admin", expires_in_s=3600)
    admin = record.principal()
    with pytest.raises(Forbidden, match="outlives"):
        await container.key_admin.create(admin, name="later", role="reader", expires_in="2h")
    with pytest.raises(Forbidden, match="rpm"):
        await container.key_admin.create(admin, name="faster", role="reader", rpm=101)
    made, _ = await container.key_admin.create(admin, name="inherits", role="admin")
    assert made.rpm == 100  # the maker's own limit (here the default), not none
    assert made.expires_at is not None and made.expires_at <= (record.expires_at or 0) + 1
    writer = dataclasses.replace(admin, role="writer")
    with pytest.raises(Forbidden, match="higher role"):
        await container.key_admin.create(writer, name="up", role="admin")
    # The operator (no key) is bound by none of it.
    unbounded, _ = await container.key_admin.create(Principal.operator("acme"), name="op", role="admin")
    assert unbounded.rpm is None and unbounded.expires_at is None
