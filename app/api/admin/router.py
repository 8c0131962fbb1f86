"""Admin endpoints: the caller's tenant's API keys, audit log and figures (admin role)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from app.api.deps import ContainerDep
from app.api.guards import Admin
from app.auth.admin import since_timestamp
from app.auth.principal import Role
from app.services.errors import InvalidInput

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role
    collections: list[str] | None = Field(None, description="Collections the key may touch (default: all).")
    rpm: int | None = Field(None, ge=1, description="Requests a minute (default auth.default_rpm).")
    tpm: int | None = Field(None, ge=1, description="Generated tokens a minute (default auth.default_tpm).")
    expires_in: str | None = Field(None, description='How long the key lives: "90s", "12h", "30d", "2w".')


@router.get("/keys")
async def list_keys(container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """The tenant's keys (never the keys themselves)."""
    return {"keys": [k.to_dict() for k in await container.key_admin.list_keys(principal)]}


@router.post("/keys", status_code=status.HTTP_201_CREATED)
async def create_key(body: KeyCreate, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """A new key in the caller's tenant. The `key` is in this answer only: it is stored as a hash."""
    record, key = await container.key_admin.create(
        principal,
        name=body.name,
        role=body.role,
        collections=body.collections,
        rpm=body.rpm,
        tpm=body.tpm,
        expires_in=body.expires_in,
    )
    return {**record.to_dict(), "key": key}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """Revoke a key of the tenant: every replica refuses it within auth.key_cache_s (at most 5 s)."""
    return (await container.key_admin.revoke(principal, key_id)).to_dict()


@router.get("/audit")
async def audit(
    container: ContainerDep,
    principal: Admin,
    since: Annotated[str | None, Query(description='"24h", "7d", or a Unix timestamp.')] = None,
    action: Annotated[str | None, Query(description="e.g. document.delete, key.create")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The tenant's audit log, newest first."""
    try:
        since_at = since_timestamp(since)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_since") from exc
    entries = await container.key_admin.entries(principal, since=since_at, action=action, limit=limit)
    return {"entries": [e.to_dict() for e in entries]}


@router.get("/metrics")
async def tenant_metrics(
    container: ContainerDep,
    principal: Admin,
    since: Annotated[str, Query(description='"24h", "7d", or a Unix timestamp.')] = "24h",
    collection: Annotated[str | None, Query(description="Only this collection.")] = None,
) -> dict[str, Any]:
    """The tenant's own figures from its answers' traces, over the collections this key may see: volume,
    latency, thumbs-up and feedback rates, no-answer rate, retrieval top scores and their drift, online
    judge scores, overall, over time and by collection, prompt and model (what `ragserver monitor report`
    writes). `/metrics` is the operator's (server-wide, metrics token only)."""
    try:
        since_at = since_timestamp(since)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_since") from exc
    names = [collection] if collection else await container.retrieval.visible_collections(principal)
    stores = [principal.collection(name) for name in names]
    figures = await container.traces.figures(principal=principal, stores=stores, since=since_at)
    return {"tenant": principal.tenant, "collections": sorted(names), **figures}
