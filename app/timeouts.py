"""Deadlines on single awaits, for code that must not hold a timeout across a `yield`.

`asyncio.timeout` around the body of an async generator would cancel whichever task happens to be
running when it fires (the consumer, between two items); bounding each await separately keeps the
cancellation inside the generator's own step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def run_until(at: float, awaitable: Awaitable[T], error: Callable[[], Exception]) -> T:
    """Await `awaitable`; at loop time `at` cancel it and raise `error()` instead. A TimeoutError of
    the awaitable's own (not this deadline's) passes through unchanged."""
    timeout = asyncio.timeout_at(at)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if timeout.expired():
            raise error() from None
        raise
