"""Bounds on generation: a per-request deadline, and a cap on generations in flight and waiting.

No FastAPI here: `ChatService` enforces them for every door (both chat APIs, the eval harness), and
`app/api/errors.py` maps the errors to HTTP (`OverLimit` 422, `RequestTimedOut` 504, `Unavailable` 503).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

from app.services.errors import PayloadTooLarge, ServiceError, Unavailable
from app.timeouts import run_until

if TYPE_CHECKING:
    from app.services.metrics import Metrics
    from app.settings import LimitSettings

T = TypeVar("T")

# What a client is told to wait when every generation slot and waiting place is taken.
BUSY_RETRY_AFTER_S = 5


class OverLimit(ServiceError):
    """A request value over one of the server's limits (HTTP 422); the message names the limit."""

    code = "invalid_request"


class RequestTimedOut(ServiceError):
    """The request did not finish within its deadline (HTTP 504, or an in-band error mid-stream)."""

    code = "request_timeout"


def check_size(text: str, limit: int, what: str) -> None:
    """PayloadTooLarge (413) naming the limit when `text` is over `limit` characters (never echoed)."""
    if len(text) > limit:
        raise PayloadTooLarge(f"the {what} is {len(text)} characters, over the limit of {limit} characters")


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
    """At most `max_concurrent_generations` holders at once and `max_waiting_generations` waiting, first
    come first served; beyond that `Unavailable` (503 + Retry-After) at once, instead of unbounded
    latency. The limits are read from the settings on each call, so they can be changed live."""

    def __init__(self, limits: LimitSettings, metrics: Metrics | None = None):
        self.limits = limits
        self.metrics = metrics
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot for the block (waiting for one if allowed)."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """Take a slot, waiting for one if a waiting place is free; else `Unavailable`."""
        if self.active < self.limits.max_concurrent_generations and not self._waiters:
            self.active += 1
            self._report()
            return
        if len(self._waiters) >= self.limits.max_waiting_generations:
            if self.metrics is not None:
                self.metrics.generations_rejected.inc()
            raise Unavailable(
                f"the server is busy: {self.active} answers are being generated and {len(self._waiters)} "
                "are waiting; retry later",
                code="server_busy",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._report()
        try:
            await waiter  # resolved by release(), which hands its slot over (active stays the same)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as the waiter was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
                self._report()
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._report()
                return
        self.active -= 1
        self._report()

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.generations_active.set(self.active)
            self.metrics.generations_waiting.set(len(self._waiters))
