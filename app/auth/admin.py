"""Key management and the audit trail as use cases, for the admin API and the CLI alike.

An admin manages its own tenant's keys only (another tenant's key id is "not found"), and of those only
the keys whose scope is within its own: a key limited to some collections sees, revokes and audits
nothing beyond them. A key never makes a key with more than it has itself: no higher role, no collection
outside its list, no looser rate limit (a key at its limit could otherwise carry on through a new one), no
later expiry.
The CLI acts as the operator of whichever tenant it names. Creating and revoking keys are audited.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable

from app.auth.audit import AuditEntry, AuditLog
from app.auth.authenticator import Authenticator
from app.auth.keys import ApiKey, KeyStore
from app.auth.principal import ROLES, Principal
from app.services.errors import Forbidden, InvalidInput
from app.settings import AuthSettings
from ingest.errors import DomainError

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


class KeyNotFound(DomainError, LookupError):
    """No such key in the caller's tenant."""

    kind, code = "not_found", "key_not_found"


def within_scope(principal: Principal, key: ApiKey) -> bool:
    """Whether `key` is one `principal` may manage: its tenant's, and no wider than its collection list."""
    if key.tenant != principal.tenant:
        return False
    if principal.collections is None:
        return True
    return key.collections is not None and set(key.collections) <= principal.collections


class KeyAdmin:
    def __init__(
        self,
        keys: KeyStore,
        audit: AuditLog,
        authenticator: Authenticator | None = None,
        settings: AuthSettings | None = None,
    ):
        self.keys = keys
        self.audit = audit
        self.authenticator = authenticator
        # The limits a key without its own has (auth.default_rpm / default_tpm).
        self.default_rpm = settings.default_rpm if settings is not None else None
        self.default_tpm = settings.default_tpm if settings is not None else None

    def _grantable(
        self, principal: Principal, role: str, rpm: int | None, tpm: int | None
    ) -> tuple[int | None, int | None]:
        """The rate limits a key made by `principal` gets (its own when none are asked for); Forbidden
        for a role above its own or a limit looser than its own. A caller without a key (the CLI, auth
        mode none) is the operator: anything goes."""
        if principal.key_id is None:
            return rpm, tpm
        if role in ROLES and not principal.has_role(role):  # an unknown role is the store's 400
            raise Forbidden(f"this key ({principal.role}) cannot make a key with the higher role {role}")
        granted = []
        for label, asked, own in (
            ("rpm", rpm, principal.rpm or self.default_rpm),
            ("tpm", tpm, principal.tpm or self.default_tpm),
        ):
            if own is not None and asked is not None and asked > own:
                raise Forbidden(f"this key cannot grant {label} {asked}: its own limit is {own}")
            granted.append(asked if asked is not None else own)
        return granted[0], granted[1]

    @staticmethod
    def _lifetime(principal: Principal, seconds: float | None) -> float | None:
        """How long a key made by `principal` lives: never past `principal`'s own expiry (Forbidden when
        asked to), which it gets when it asks for none."""
        if principal.expires_at is None:
            return seconds
        left = principal.expires_at - time.time()
        if seconds is None:
            return left
        if seconds > left:
            raise Forbidden("this key cannot make a key that outlives it (its own expiry comes first)")
        return seconds

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
        rpm, tpm = self._grantable(principal, role, rpm, tpm)
        wanted = list(collections) if collections is not None else None
        if principal.collections is not None:
            wanted = wanted if wanted is not None else sorted(principal.collections)
            outside = sorted(set(wanted) - principal.collections)
            if outside:
                raise Forbidden(f"this key cannot grant collections it may not touch: {', '.join(outside)}")
        async with self.audit.action(principal, "key.create") as target:
            try:
                seconds = parse_duration(expires_in) if isinstance(expires_in, str) else expires_in
                seconds = self._lifetime(principal, seconds)
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
        """The tenant's keys `principal` may manage."""
        keys = await asyncio.to_thread(self.keys.list_keys, principal.tenant)
        return [k for k in keys if within_scope(principal, k)]

    async def revoke(self, principal: Principal, key_id: str) -> ApiKey:
        """Revoke a key `principal` may manage (any other is "not found", like a missing one)."""
        async with self.audit.action(principal, "key.revoke", object_id=key_id):
            found = await asyncio.to_thread(self.keys.get, key_id, tenant=principal.tenant)
            if found is None or not within_scope(principal, found):
                raise KeyNotFound(f"key {key_id!r} not found")
            record = await asyncio.to_thread(self.keys.revoke, key_id, tenant=principal.tenant)
            if record is None:
                raise KeyNotFound(f"key {key_id!r} not found")
        if self.authenticator is not None:
            self.authenticator.forget(key_id)  # this replica at once; the others within key_cache_s
        return record

    async def entries(
        self, principal: Principal, *, since: float | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """`principal`'s tenant's audit entries, newest first; for a key limited to some collections, only
        those about its collections and its own actions."""
        return await asyncio.to_thread(
            self.audit.query,
            tenant=principal.tenant,
            since=since,
            action=action,
            collections=principal.collections,
            actor=principal.actor,
            limit=limit,
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
