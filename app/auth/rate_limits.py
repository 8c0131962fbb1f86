"""Per-key rate limits with the `limits` library: requests a minute (every authenticated request counts)
and generated tokens a minute (checked before a generation, spent after it).

Counters live in Redis when one is configured (`auth.rate_limit_url`, else `redis.url`), so every
replica counts against the same limit; otherwise in this process's memory. Fixed one-minute windows; an
over-limit request gets 429 with Retry-After = seconds until its window resets. While the shared counter
store fails, each process counts in its own memory instead (logged and counted): the limits stay on, each
replica enforcing them alone, so a Redis outage never switches them off.

Failed authentications are counted the same way, per client address (`auth.max_failed_auth_per_minute`).
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

# After the shared counter store fails, this process counts alone for this long before asking it again.
SHARED_STORE_RETRY_S = 5.0


def storage_url(settings: Settings) -> str:
    """The `limits` storage URL for `settings` (async flavour)."""
    url = settings.rate_limit_redis_url or "memory://"
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
        # Where this process counts while the shared store fails.
        self._fallback = FixedWindowRateLimiter(storage_from_string("async+memory://"))
        self._failing = False
        self._retry_shared_at = 0.0

    def _rpm(self, principal: Principal) -> int | None:
        return principal.rpm or self.settings.auth.default_rpm

    def _tpm(self, principal: Principal) -> int | None:
        return principal.tpm or self.settings.auth.default_tpm

    async def _count(
        self, item: RateLimitItemPerMinute, ids: tuple[str, ...], consume: bool, cost: int = 1
    ) -> int:
        """0 when the window of `ids` has room (after counting `cost` with `consume`), else the seconds
        until it resets. On the shared store, or this process's memory while that fails."""
        if self._failing and time.monotonic() < self._retry_shared_at:
            return await self._check(self._fallback, item, ids, consume, cost)
        try:
            retry = await self._check(self._limiter, item, ids, consume, cost)
        except Exception as exc:
            self.metrics.rate_limit_errors.inc()
            if not self._failing:
                log.warning("rate limit store failed (%r); counting in this process until it answers", exc)
            self._failing = True
            # A store that hangs would make every request wait for its timeout: try it again later.
            self._retry_shared_at = time.monotonic() + SHARED_STORE_RETRY_S
            return await self._check(self._fallback, item, ids, consume, cost)
        if self._failing:
            log.info("rate limit store answers again")
            self._failing = False
        return retry

    @staticmethod
    async def _check(
        limiter: FixedWindowRateLimiter,
        item: RateLimitItemPerMinute,
        ids: tuple[str, ...],
        consume: bool,
        cost: int,
    ) -> int:
        allowed = await (limiter.hit(item, *ids, cost=cost) if consume else limiter.test(item, *ids))
        if allowed:
            return 0
        stats = await limiter.get_window_stats(item, *ids)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def _enforce(self, principal: Principal, limit: int | None, kind: str, consume: bool) -> None:
        """RateLimited when `principal`'s key is past `limit` (`kind`: "requests" or "tokens"); with
        `consume`, this call counts one against it first."""
        if principal.key_id is None or limit is None:
            return
        retry = await self._count(RateLimitItemPerMinute(limit), (kind, principal.key_id), consume)
        if retry:
            self.metrics.rate_limited.labels(limit=kind).inc()
            what = "requests" if kind == "requests" else "generated tokens"
            raise RateLimited(f"this key is over its limit of {limit} {what} a minute", retry_after_s=retry)

    async def hit_auth_failure(self, address: str) -> None:
        """Count one failed authentication from `address`; RateLimited past
        auth.max_failed_auth_per_minute (the caller answers 429 instead of 401)."""
        limit = self.settings.auth.max_failed_auth_per_minute
        retry = await self._count(RateLimitItemPerMinute(limit), ("auth-failures", address), consume=True)
        if retry:
            self.metrics.rate_limited.labels(limit="auth_failures").inc()
            raise RateLimited(
                "too many failed authentications from this address "
                f"(auth.max_failed_auth_per_minute: {limit})",
                retry_after_s=retry,
                code="auth_throttled",
            )

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
        await self._count(
            RateLimitItemPerMinute(tpm), ("tokens", principal.key_id), consume=True, cost=tokens
        )
