"""Conversation history in Redis, so stateless API replicas share conversations.

One key per conversation: a list of JSON turns, oldest first. Redis expires the key itself, so there is
nothing to sweep.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.history.base import Turn


class RedisHistoryStore:
    """`HistoryStore` on Redis (redis-py asyncio)."""

    def __init__(self, url: str, ttl_s: int, max_turns: int, key_prefix: str = "ragserver:conv:") -> None:
        if ttl_s < 1 or max_turns < 1:
            raise ValueError("ttl_s and max_turns must be >= 1")
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self.key_prefix = key_prefix
        # No connection is made here: the pool connects on first use, so building the store never blocks;
        # the connect timeout keeps ping() (health checks) from hanging on an unreachable host.
        self._redis: Redis = Redis.from_url(url, decode_responses=True, socket_connect_timeout=5.0)

    def _key(self, conversation_id: str) -> str:
        return f"{self.key_prefix}{conversation_id}"

    async def append(self, conversation_id: str, turns: list[Turn]) -> None:
        """See `HistoryStore.append`."""
        if not turns:
            return
        key = self._key(conversation_id)
        # MULTI/EXEC: push, trim and expire apply together, so a concurrent reader never sees an
        # untrimmed list and a crash between commands cannot leave a key without a TTL.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(turn.to_json() for turn in turns))
            pipe.ltrim(key, -self.max_turns, -1)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def get(self, conversation_id: str) -> list[Turn] | None:
        """See `HistoryStore.get`."""
        raws = await self._redis.lrange(self._key(conversation_id), 0, -1)
        # Redis has no empty lists: a missing key reads as [], and that means unknown or expired.
        if not raws:
            return None
        return [Turn.from_json(raw) for raw in raws]

    async def delete(self, conversation_id: str) -> bool:
        """See `HistoryStore.delete`."""
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
