"""Pick the history backend from settings: Redis when `history.redis_url` or `redis.url` is set, else
SQLite."""

from __future__ import annotations

from app.history.base import HistoryStore
from app.settings import Settings


def build_history_store(settings: Settings) -> HistoryStore:
    """Build the configured `HistoryStore` (SQLite at `settings.sqlite_path` unless Redis is configured)."""
    cfg = settings.history
    url = settings.history_redis_url
    if url:
        from app.history.redis_history import RedisHistoryStore

        return RedisHistoryStore(
            url,
            ttl_s=cfg.ttl_s,
            max_turns=cfg.max_turns,
            key_prefix=cfg.key_prefix,
            timeout_s=cfg.timeout_s,
        )

    from app.history.sqlite_history import SQLiteHistoryStore

    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteHistoryStore(settings.sqlite_path, ttl_s=cfg.ttl_s, max_turns=cfg.max_turns)
