"""Bearer key -> `Principal`, with a short cache so a request does not cost a database round trip.

A replica trusts a looked-up key for `auth.key_cache_s` (at most 5 s), so a key revoked on any replica,
or one that expires, fails everywhere within that; a revoke through this replica's admin API takes effect
here at once. With auth mode `none` every request is `Principal.anonymous()`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time

import sqlalchemy as sa

from app.auth.keys import ApiKey, KeyStore, hash_key
from app.auth.principal import Principal
from app.services.errors import Unauthenticated, Unavailable
from app.settings import AuthSettings

log = logging.getLogger(__name__)

# Cached lookups kept at most; beyond, the oldest are dropped (unknown keys are cached too: a client
# retrying a bad key must not hammer the database).
MAX_CACHED = 10_000


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Authenticator:
    def __init__(self, settings: AuthSettings, keys: KeyStore):
        self.settings = settings
        self.keys = keys
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings.mode == "api_key"

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this Authorization header; Unauthenticated (401) when there
        is no key, or it is unknown, revoked or expired."""
        if not self.enabled:
            return Principal.anonymous()
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("an API key is required: send `Authorization: Bearer <key>`")
        record = await self._lookup(token)
        if record is None or not record.is_active():
            raise Unauthenticated("the API key is not valid (unknown, revoked or expired)")
        return record.principal()

    def is_metrics_token(self, authorization: str | None) -> bool:
        """Whether the header carries the configured metrics token (compared in constant time)."""
        expected = self.settings.metrics_token
        token = bearer_token(authorization)
        if expected is None or token is None:
            return False
        return hmac.compare_digest(token.encode(), expected.get_secret_value().encode())

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached lookups (of one key, or all): the next request reads the database."""
        with self._lock:
            if key_id is None:
                self._cache.clear()
            else:
                for digest, (_, record) in list(self._cache.items()):
                    if record is not None and record.key_id == key_id:
                        del self._cache[digest]

    async def _lookup(self, token: str) -> ApiKey | None:
        digest = hash_key(token)  # the cache holds digests, never keys
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.settings.key_cache_s:
            return cached[1]
        try:
            record = await asyncio.to_thread(self.keys.lookup, token)
        except sa.exc.SQLAlchemyError as exc:
            # Fail closed: a key that cannot be checked is not accepted (nor cached).
            log.warning("key lookup failed: %r", exc)
            raise Unavailable(
                "the key store is unavailable; try again", code="auth_unavailable", retry_after_s=5
            ) from exc
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                for stale in list(self._cache)[: MAX_CACHED // 10]:
                    del self._cache[stale]
            self._cache[digest] = (now, record)
        return record
