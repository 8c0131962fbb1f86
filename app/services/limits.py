"""Bounds on generation: a per-request deadline, and a cap on generations in flight and waiting.

No FastAPI here: `ChatService` enforces them for every door (both chat APIs, the eval harness), and
`app/api/errors.py` maps the errors to HTTP (`OverLimit` 422, `RequestTimedOut` 504, `Unavailable` 503).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from app.services.errors import PayloadTooLarge, RateLimited, ServiceError, Unavailable
from app.timeouts import run_until
from ingest.filters import FilterLimits, MetadataFilter, parse_filters
from ingest.vector_index import DEFAULT_TENANT

if TYPE_CHECKING:
    from app.services.metrics import Metrics
    from app.settings import LimitSettings

T = TypeVar("T")

# What a client is told to wait when every generation slot and waiting place is taken.
BUSY_RETRY_AFTER_S = 5


class OverLimit(ServiceError):
    """A request value over one of the server's limits (HTTP 422); the message names the limit."""

    kind = "over_limit"
    code = "invalid_request"


class RequestTimedOut(ServiceError):
    """The request did not finish within its deadline (HTTP 504, or an in-band error mid-stream)."""

    kind = "timeout"
    code = "request_timeout"


def check_size(text: str, limit: int, what: str) -> None:
    """PayloadTooLarge (413) naming the limit when `text` is over `limit` characters (never echoed)."""
    if len(text) > limit:
        raise PayloadTooLarge(f"the {what} is {len(text)} characters, over the limit of {limit} characters")


def check_filters(filters: Any, limits: LimitSettings) -> MetadataFilter | None:
    """`filters` parsed under the configured limits (`limits.max_filter_*`): FilterError (400) naming
    the limit it is over. Every door that takes a filter calls this before any other work."""
    bounds = FilterLimits(
        max_keys=limits.max_filter_keys,
        max_values=limits.max_filter_values,
        max_value_chars=limits.max_filter_value_chars,
        max_bytes=limits.max_filter_bytes,
        prefix="limits",
    )
    return parse_filters(filters, bounds)


class Deadline:
    """A point in (event-loop) time a request must finish by. `run` bounds one await by it, so a
    generator can bound each step without a timeout spanning its yields."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = asyncio.get_running_loop().time() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - asyncio.get_running_loop().time())

    def error(self) -> RequestTimedOut:
        return RequestTimedOut(f"the request did not finish within its {self.seconds:g} s deadline")

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, cancelled with `RequestTimedOut` at the deadline."""
        return await run_until(self.at, awaitable, self.error)


class GenerationLimiter:
    """At most `max_concurrent_generations` holders at once and `max_waiting_generations` waiting; beyond
    that `Unavailable` (503 + Retry-After) at once, instead of unbounded latency.

    Shared by every tenant, so each tenant has a share: while other tenants are waiting, a tenant holding
    `max_generations_per_tenant` slots gets no more (a freed slot goes to the first waiter of a tenant
    under its share), and one tenant may hold at most `max_waiting_generations_per_tenant` waiting places
    (429 beyond). Alone, a tenant may use every slot: the share costs nothing until someone else needs
    one. The limits are read from the settings on each call, so they can be changed live."""

    def __init__(self, limits: LimitSettings, metrics: Metrics | None = None):
        self.limits = limits
        self.metrics = metrics
        self.active = 0
        self._active_by: Counter[str] = Counter()
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, tenant: str = DEFAULT_TENANT) -> AsyncIterator[None]:
        """Hold one of `tenant`'s generation slots for the block (waiting for one if allowed)."""
        await self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)

    def _within_share(self, tenant: str) -> bool:
        return self._active_by[tenant] < self.limits.max_generations_per_tenant

    async def acquire(self, tenant: str = DEFAULT_TENANT) -> None:
        """Take a slot for `tenant`, waiting for one if a waiting place is free; else `Unavailable`
        (every place taken) or `RateLimited` (the tenant holds its share of the waiting places)."""
        self._hand_over()  # slots a raised limit freed go to those already waiting first
        if self.active < self.limits.max_concurrent_generations and not self._waiters:
            self._take(tenant)  # alone or not, a free slot nobody waits for is taken
            return
        mine = sum(1 for t, _ in self._waiters if t == tenant)
        refusal: ServiceError | None = None
        if mine >= self.limits.max_waiting_generations_per_tenant:
            refusal = RateLimited(
                f"this tenant has {mine} answers waiting for a generation slot "
                "(limits.max_waiting_generations_per_tenant); retry later",
                code="tenant_busy",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        elif len(self._waiters) >= self.limits.max_waiting_generations:
            refusal = Unavailable(
                f"the server is busy: {self.active} answers are being generated and {len(self._waiters)} "
                "are waiting; retry later",
                code="server_busy",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        if refusal is not None:
            if self.metrics is not None:
                self.metrics.generations_rejected.inc()
            raise refusal
        waiter = asyncio.get_running_loop().create_future()
        entry = (tenant, waiter)
        self._waiters.append(entry)
        self._report()
        try:
            await waiter  # resolved by _hand_over(), which counts the slot as this tenant's
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(tenant)  # the slot arrived as the waiter was cancelled: pass it on
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._report()
            raise

    def release(self, tenant: str = DEFAULT_TENANT) -> None:
        """Give `tenant`'s slot back: to the first waiter of a tenant within its share, else the first."""
        self.active -= 1
        self._active_by[tenant] -= 1
        if self._active_by[tenant] <= 0:
            del self._active_by[tenant]
        self._hand_over()
        self._report()

    def _take(self, tenant: str) -> None:
        self.active += 1
        self._active_by[tenant] += 1
        self._report()

    def _hand_over(self) -> None:
        """Give free slots to waiters: the first of a tenant within its share, else the first."""
        while self.active < self.limits.max_concurrent_generations and self._waiters:
            entry = next((e for e in self._waiters if self._within_share(e[0])), self._waiters[0])
            self._waiters.remove(entry)
            tenant, waiter = entry
            if waiter.done():  # cancelled while the slot was on its way: the acquire cleans up
                continue
            self._take(tenant)
            waiter.set_result(None)

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.generations_active.set(self.active)
            self.metrics.generations_waiting.set(len(self._waiters))
