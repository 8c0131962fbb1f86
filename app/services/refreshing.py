"""What every replica shares lives in the system of record; each process keeps what it read for a short
while (`experiments.refresh_s`) and reads again after it, so a change made through any replica reaches every
other within that, with no message bus and no restart (answer profiles, running experiments, registered
models, routing chains and curated answers, document labelers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Refreshing(Generic[K, V]):
    """`load(key)`, kept per key for `ttl()` seconds (read at every use, so settings changed in a test or at
    run time apply at once)."""

    def __init__(self, load: Callable[[K], V], ttl: Callable[[], float]):
        self._load = load
        self._ttl = ttl
        self._kept: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V:
        """The value, read again when older than the ttl (blocking: for threads that may block)."""
        kept = self._kept.get(key)
        if kept is not None and time.monotonic() - kept[0] < self._ttl():
            return kept[1]
        value = self._load(key)
        self._kept[key] = (time.monotonic(), value)
        return value

    async def aget(self, key: K) -> V:
        """`get` for the event loop: a read goes to a worker thread."""
        kept = self._kept.get(key)
        if kept is not None and time.monotonic() - kept[0] < self._ttl():
            return kept[1]
        value = await asyncio.to_thread(self._load, key)
        self._kept[key] = (time.monotonic(), value)
        return value

    def forget(self, key: K | None = None) -> None:
        """Read `key` (None: every key) again at its next use: this process's own change shows at once."""
        if key is None:
            self._kept.clear()
        else:
            self._kept.pop(key, None)
