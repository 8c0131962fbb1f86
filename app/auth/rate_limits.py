"""Per-key rate limits with the `limits` library: requests a minute (every authenticated request counts)
and generated tokens a minute (checked before a generation, spent after it).

Counters live in Redis when one is configured (`auth.rate_limit_url`, else the history Redis), so every
replica counts against the same limit; otherwise in this process's memory. Fixed one-minute windows; an
over-limit request gets 429 with Retry-After = seconds until its window resets. A counter store that fails
lets the request through (logged and counted): rate limits protect capacity, they are not access control.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string

from app.auth.principal import Principal
from app.services.errors import RateLimited
from app.services.metrics import Metrics
from app.settings import Settings

log = logging.getLogger(__name__)


def storage_url(settings: Settings) -> str:
    """The `limits` storage URL for `settings` (async flavour)."""
    url = settings.auth.rate_limit_url or settings.history.redis_url or "memory://"
    return url if url.startswith("async+") else f"async+{url}"


class RateLimits:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        url = storage_url(settings)
        options: dict[str, str | bool] = {}
        if "redis" in url.split("://", 1)[0]:
            options = {"implementation": "redispy", "key_prefix": "ragserver:limits"}
        self.url = url
        self._storage = storage_from_string(url, **options)
        self._limiter = FixedWindowRateLimiter(self._storage)

    def _rpm(self, principal: Principal) -> int | None:
        return principal.rpm or self.settings.auth.default_rpm

    def _tpm(self, principal: Principal) -> int | None:
        return principal.tpm or self.settings.auth.default_tpm

    async def _retry_after(self, item: RateLimitItemPerMinute, *ids: str) -> int:
        stats = await self._limiter.get_window_stats(item, *ids)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def _failed(self, what: str, exc: Exception) -> None:
        self.metrics.rate_limit_errors.inc()
        log.warning("rate limit store failed on %s (%r); letting the request through", what, exc)

    async def _enforce(self, principal: Principal, limit: int | None, kind: str, consume: bool) -> None:
        """RateLimited when `principal`'s key is past `limit` (`kind`: "requests" or "tokens"); with
        `consume`, this call counts one against it first."""
        if principal.key_id is None or limit is None:
            return
        item, ids = RateLimitItemPerMinute(limit), (kind, principal.key_id)
        try:
            allowed = await (self._limiter.hit(item, *ids) if consume else self._limiter.test(item, *ids))
            retry = 0 if allowed else await self._retry_after(item, *ids)
        except Exception as exc:
            self._failed(kind, exc)
            return
        if not allowed:
            self.metrics.rate_limited.labels(limit=kind).inc()
            what = "requests" if kind == "requests" else "generated tokens"
            raise RateLimited(f"this key is over its limit of {limit} {what} a minute", retry_after_s=retry)

    async def hit_request(self, principal: Principal) -> None:
        """Count one request of `principal`'s key; RateLimited past its requests a minute."""
        await self._enforce(principal, self._rpm(principal), "requests", consume=True)

    async def check_tokens(self, principal: Principal) -> None:
        """RateLimited when `principal`'s key has spent its generated tokens for this minute."""
        await self._enforce(principal, self._tpm(principal), "tokens", consume=False)

    async def spend_tokens(self, principal: Principal, tokens: int) -> None:
        """Count `tokens` generated for `principal`'s key (an answer that went over still counts whole)."""
        tpm = self._tpm(principal)
        if principal.key_id is None or tpm is None or tokens <= 0:
            return
        try:
            await self._limiter.hit(RateLimitItemPerMinute(tpm), "tokens", principal.key_id, cost=tokens)
        except Exception as exc:
            self._failed("tokens spent", exc)
