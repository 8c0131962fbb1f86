"""Conversation history in Redis, so stateless API replicas share conversations.

One key per conversation: a list of JSON turns, oldest first. Redis expires the key itself, so there is
nothing to sweep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.history.base import HistoryStoreError, Turn

DEFAULT_KEY_PREFIX = "ragserver:conv:"


class RedisHistoryStore:
    """`HistoryStore` on Redis (redis-py asyncio).

    Keys are `key_prefix + conversation_id`: deployments sharing one Redis database need their own
    prefix (`history.key_prefix`). Every socket operation is bounded by `timeout_s` and a failed command
    is retried once, so a Redis that refuses or hangs fails a call within about 2 * timeout_s, as a
    `HistoryStoreError`.
    """

    def __init__(
        self,
        url: str,
        ttl_s: int,
        max_turns: int,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        *,
        timeout_s: float = 3.0,
    ) -> None:
        if ttl_s < 1 or max_turns < 1:
            raise ValueError("ttl_s and max_turns must be >= 1")
        if not key_prefix:
            raise ValueError("key_prefix must not be empty")
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self.key_prefix = key_prefix
        # No connection is made here: the pool connects on first use, so building the store never blocks.
        # Connect and read timeouts keep a hanging Redis from hanging requests (and health checks).
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )

    @asynccontextmanager
    async def _failing_as_store_error(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise HistoryStoreError(f"redis history store: {exc!r}") from exc

    def _key(self, conversation_id: str) -> str:
        return f"{self.key_prefix}{conversation_id}"

    async def append(self, conversation_id: str, turns: list[Turn]) -> None:
        """See `HistoryStore.append`."""
        if not turns:
            return
        key = self._key(conversation_id)
        # MULTI/EXEC: push, trim and expire apply together, so a concurrent reader never sees an
        # untrimmed list and a crash between commands cannot leave a key without a TTL.
        async with self._failing_as_store_error(), self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(turn.to_json() for turn in turns))
            pipe.ltrim(key, -self.max_turns, -1)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def get(self, conversation_id: str) -> list[Turn] | None:
        """See `HistoryStore.get`."""
        async with self._failing_as_store_error():
            raws = await self._redis.lrange(self._key(conversation_id), 0, -1)  # type: ignore[misc]
        # Redis has no empty lists: a missing key reads as [], and that means unknown or expired.
        if not raws:
            return None
        return [Turn.from_json(raw) for raw in raws]

    async def delete(self, conversation_id: str) -> bool:
        """See `HistoryStore.delete`."""
        async with self._failing_as_store_error():
            return bool(await self._redis.delete(self._key(conversation_id)))

    async def ping(self) -> bool:
        """See `HistoryStore.ping`."""
        return await ping_redis(self._redis)

    async def aclose(self) -> None:
        """See `HistoryStore.aclose`."""
        await self._redis.aclose()


async def ping_redis(client: Redis) -> bool:
    """True when Redis answers PING; False (never an exception) when it is down, for health checks."""
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
