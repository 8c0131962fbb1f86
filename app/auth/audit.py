"""The audit log: every write (upload, document delete, conversation delete, key create/revoke) with who,
what, which object, when and the outcome, in the relational system of record.

`AuditLog.action(...)` is the one way to record: an async context manager around the write that records
"ok", or the error's status and code when it raises (a refused write is audited too). Recording never
fails the request: a log that cannot be written is logged and counted.

An entry's `id` is random (`aud_` and 16 hex characters): the table's row number stays internal (it
orders entries of one instant), since the gaps between one tenant's row numbers would count the other
tenants' writes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.auth.principal import Principal
from app.db.tables import audit_log
from app.logging_setup import current_request_id
from ingest.errors import describe

log = logging.getLogger(__name__)


def new_audit_id() -> str:
    """A random public id for an audit entry."""
    return "aud_" + secrets.token_hex(8)


@dataclass
class AuditEntry:
    tenant: str
    actor: str
    action: str
    outcome: str
    key_id: str | None = None
    collection: str | None = None
    object_id: str | None = None
    status: int | None = None
    detail: str | None = None
    request_id: str | None = None
    at: float = field(default_factory=time.time)
    id: str = field(default_factory=new_audit_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditTarget:
    """What an audited write touched; the write may fill in `object_id` once it knows it (a new job)."""

    collection: str | None = None
    object_id: str | None = None
    detail: str | None = None


class AuditLog:
    """Audit entries on an already migrated engine."""

    def __init__(self, engine: Engine, on_failure: Any = None):
        self.engine = engine
        self._on_failure = on_failure

    def write(self, entry: AuditEntry) -> None:
        row = entry.to_dict()
        row["public_id"] = row.pop("id")
        with self.engine.begin() as conn:
            conn.execute(sa.insert(audit_log), row)

    def query(
        self,
        *,
        tenant: str | None = None,
        since: float | None = None,
        action: str | None = None,
        collections: Collection[str] | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first. With `collections`, only the entries about those collections, and those of
        `actor` (what a collection-scoped key did itself, such as making a key)."""
        columns = [c for c in audit_log.c if c.name not in ("id", "public_id")]
        q = (
            sa.select(*columns, audit_log.c.public_id.label("id"))
            .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
            .limit(limit)
        )
        if tenant is not None:
            q = q.where(audit_log.c.tenant == tenant)
        if since is not None:
            q = q.where(audit_log.c.at >= since)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        if collections is not None:
            q = q.where(audit_log.c.collection.in_(sorted(collections)) | (audit_log.c.actor == actor))
        with self.engine.connect() as conn:
            return [AuditEntry(**dict(r._mapping)) for r in conn.execute(q)]

    async def record(self, entry: AuditEntry) -> None:
        """Write `entry`; a failure is logged, never raised."""
        try:
            await asyncio.to_thread(self.write, entry)
        except Exception:
            log.exception("audit entry %s %s could not be written", entry.action, entry.object_id)
            if self._on_failure is not None:
                self._on_failure()

    @asynccontextmanager
    async def action(
        self,
        principal: Principal,
        action: str,
        *,
        collection: str | None = None,
        object_id: str | None = None,
    ) -> AsyncIterator[AuditTarget]:
        """Audit the write inside the block: outcome "ok", or "error" with the status the error maps to."""
        target = AuditTarget(collection=collection, object_id=object_id)
        outcome, status, detail = "ok", None, None
        try:
            yield target
        except BaseException as exc:
            outcome = "error"
            if isinstance(exc, asyncio.CancelledError):
                status, detail = 499, "cancelled"
            else:
                error = describe(exc)  # what the client was told (ingest.errors)
                status = error.status if error else 500
                detail = f"{error.code}: {error.message}"[:500] if error else type(exc).__name__
            raise
        finally:
            await asyncio.shield(
                self.record(
                    AuditEntry(
                        tenant=principal.tenant,
                        actor=principal.actor,
                        key_id=principal.key_id,
                        action=action,
                        outcome=outcome,
                        collection=target.collection,
                        object_id=target.object_id,
                        status=status,
                        detail=detail or target.detail,
                        request_id=current_request_id(),
                    )
                )
            )


def audited(
    audit: AuditLog | None,
    principal: Principal,
    action: str,
    *,
    collection: str | None = None,
    object_id: str | None = None,
) -> AbstractAsyncContextManager[Any]:
    """`audit.action(...)`, or nothing when a service was built without an audit log."""
    if audit is None:
        return nullcontext()
    return audit.action(principal, action, collection=collection, object_id=object_id)
