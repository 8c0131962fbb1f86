"""Key management and the audit trail as use cases, for the admin API and the CLI alike.

An admin manages its own tenant's keys only (another tenant's key id is "not found"); the CLI acts as
the operator of whichever tenant it names. Creating and revoking keys are audited.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable

from app.auth.audit import AuditEntry, AuditLog
from app.auth.authenticator import Authenticator
from app.auth.keys import ApiKey, KeyStore
from app.auth.principal import Principal
from app.services.errors import Forbidden, InvalidInput

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "15m", "12h", "30d" or "2w"; ValueError otherwise."""
    match = _DURATION.fullmatch(text or "")
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 12h, 30d, 2w)")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {text!r}")
    return seconds


class KeyNotFound(LookupError):
    """No such key in the caller's tenant."""


class KeyAdmin:
    def __init__(self, keys: KeyStore, audit: AuditLog, authenticator: Authenticator | None = None):
        self.keys = keys
        self.audit = audit
        self.authenticator = authenticator

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        role: str,
        collections: Iterable[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_in: str | float | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key in `principal`'s tenant (the key is returned once). A key limited to some
        collections makes keys limited to those at most."""
        wanted = list(collections) if collections is not None else None
        if principal.collections is not None:
            wanted = wanted if wanted is not None else sorted(principal.collections)
            outside = sorted(set(wanted) - principal.collections)
            if outside:
                raise Forbidden(f"this key cannot grant collections it may not touch: {', '.join(outside)}")
        async with self.audit.action(principal, "key.create") as target:
            try:
                seconds = parse_duration(expires_in) if isinstance(expires_in, str) else expires_in
                record, key = await asyncio.to_thread(
                    self.keys.create,
                    tenant=principal.tenant,
                    name=name,
                    role=role,
                    collections=wanted,
                    rpm=rpm,
                    tpm=tpm,
                    expires_in_s=seconds,
                )
            except ValueError as exc:
                raise InvalidInput(str(exc), code="invalid_key") from exc
            target.object_id = record.key_id
            target.detail = f"name={record.name} role={record.role}"
        return record, key

    async def list_keys(self, principal: Principal) -> list[ApiKey]:
        return await asyncio.to_thread(self.keys.list_keys, principal.tenant)

    async def revoke(self, principal: Principal, key_id: str) -> ApiKey:
        async with self.audit.action(principal, "key.revoke", object_id=key_id):
            record = await asyncio.to_thread(self.keys.revoke, key_id, tenant=principal.tenant)
            if record is None:
                raise KeyNotFound(f"key {key_id!r} not found")
        if self.authenticator is not None:
            self.authenticator.forget(key_id)  # this replica at once; the others within key_cache_s
        return record

    async def entries(
        self, principal: Principal, *, since: float | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """`principal`'s tenant's audit entries, newest first."""
        return await asyncio.to_thread(
            self.audit.query, tenant=principal.tenant, since=since, action=action, limit=limit
        )


def since_timestamp(text: str | None, now: float | None = None) -> float | None:
    """`--since`/`?since=`: a duration back from now ("24h", "7d") or a Unix timestamp."""
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    try:
        value = float(text)
    except ValueError:
        return now - parse_duration(text)
    return value if value > 10_000_000 else now - value
