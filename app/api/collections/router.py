"""Blue/green collections over HTTP: list a collection's versions; rebuild it into a new version (with
another embedding model or chunking) while the serving version keeps answering; roll back; prune."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.api.deps import ContainerDep
from app.api.guards import Admin, Reader
from app.container import Container
from app.services.collection_versions import CollectionVersion
from app.services.errors import InvalidInput

router = APIRouter(prefix="/v1/collections", tags=["collections"])
log = logging.getLogger(__name__)


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding_model: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="A sentence-transformers model directory on the server, under collections.model_roots "
        "(default roots: the data dir's `models` folder); default: the configured model.",
    )
    chunk_size: int | None = Field(None, ge=16, le=8192, description="Tokens per chunk (default: settings).")
    chunk_overlap: int | None = Field(None, ge=0, le=4096)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RebuildRequest:
        if self.chunk_size is not None and self.chunk_overlap is not None:
            if self.chunk_overlap >= self.chunk_size:
                raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, description="The version to serve (default: the previous one).")


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep: int = Field(0, ge=0, le=100, description="Inactive ready versions to keep, newest first.")
    abandoned: bool = Field(
        False, description="Also drop a version left `building` by a rebuild whose process died."
    )


def _versions_view(collection: str, versions: list[CollectionVersion]) -> dict[str, Any]:
    active = next((v for v in versions if v.active), None)
    return {
        "collection": collection,
        "active": active.label if active else None,
        "versions": [{**v.to_dict(), "collection": collection} for v in versions],
    }


@router.get("/{collection}/versions")
async def list_versions(collection: str, container: ContainerDep, principal: Reader) -> dict[str, Any]:
    """The collection's versions, which one serves, and each one's model, chunking, state and counts."""
    store = principal.collection(collection)
    versions = await asyncio.to_thread(container.versions.versions, store)
    return _versions_view(collection, versions)


@router.post("/{collection}/rebuild", status_code=status.HTTP_202_ACCEPTED)
async def rebuild(
    collection: str, container: ContainerDep, principal: Admin, body: RebuildRequest | None = None
) -> dict[str, Any]:
    """Start filling a new version from the serving one (202): the old version answers until the new
    one is complete, then the alias switches. Follow it with GET .../versions. 409 while another
    rebuild of the collection runs; 400 `invalid_embedding_model`, the same for every path, unless
    `embedding_model` is a model directory under collections.model_roots."""
    body = body or RebuildRequest()
    store = principal.collection(collection)
    async with container.audit.action(principal, "collection.rebuild", collection=store) as audited:
        try:
            target = await asyncio.to_thread(
                container.versions.start_rebuild,
                store,
                embedding_model=body.embedding_model,
                chunk_size=body.chunk_size,
                chunk_overlap=body.chunk_overlap,
            )
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"cannot build a pipeline for that version: {exc}", code="invalid_rebuild"
            ) from exc
        audited.object_id = target.label
    _run_in_background(container, target)
    return {**target.to_dict(), "collection": collection}


@router.post("/{collection}/rollback")
async def rollback(
    collection: str, container: ContainerDep, principal: Admin, body: RollbackRequest | None = None
) -> dict[str, Any]:
    """Serve the previous version again (or `version`); 409 when there is none ready."""
    store = principal.collection(collection)
    async with container.audit.action(principal, "collection.rollback", collection=store) as audited:
        target = await asyncio.to_thread(
            container.versions.rollback, store, (body or RollbackRequest()).version
        )
        audited.object_id = target.label
    return {**target.to_dict(), "collection": collection}


@router.post("/{collection}/prune")
async def prune(
    collection: str, container: ContainerDep, principal: Admin, body: PruneRequest | None = None
) -> dict[str, Any]:
    """Drop the versions that do not serve (but the newest `keep`); returns what was dropped."""
    store = principal.collection(collection)
    async with container.audit.action(principal, "collection.prune", collection=store) as audited:
        body = body or PruneRequest()
        dropped = await asyncio.to_thread(
            lambda: container.versions.prune(store, body.keep, abandoned=body.abandoned)
        )
        audited.detail = ",".join(v.label for v in dropped)
    return {"collection": collection, "pruned": [v.label for v in dropped]}


def _run_in_background(container: Container, target: CollectionVersion) -> None:
    """The rebuild runs on a thread of its own (it embeds for minutes); its outcome is in the registry."""

    def run() -> None:
        try:
            container.versions.run_rebuild(target)
        except Exception:  # recorded as the version's error by run_rebuild
            log.warning("rebuild of %s into %s failed", target.collection, target.label)

    threading.Thread(target=run, name=f"rebuild-{target.physical}", daemon=True).start()
