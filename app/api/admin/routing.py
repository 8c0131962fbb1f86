"""Admin endpoints of holistic answering: a collection's routing chain, its curated answers and its
document labeler (admin role, the caller's tenant's collections only; docs/ROUTING.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, status

from app.api.deps import ContainerDep
from app.api.guards import Admin
from app.routing.chain import parse_chain
from app.services.document_labels import parse_labeler
from app.services.errors import InvalidInput

router = APIRouter(prefix="/v1/admin/collections/{collection}", tags=["admin"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@router.get("/routes")
async def show_routes(collection: str, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """The collection's routing chain (`chain: null` when it has none: every question goes to the LLM)."""
    return await container.routing.show(principal, collection)


@router.put(
    "/routes",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": {"type": "object"}}, "application/yaml": {}},
            "required": True,
        }
    },
)
async def set_routes(
    collection: str, request: Request, container: ContainerDep, principal: Admin
) -> dict[str, Any]:
    """Replace the collection's routing chain (JSON, or the YAML file with `Content-Type:
    application/yaml`): rules (RE2 patterns or keywords), curated answers, the LLM's model policy. Every
    replica uses it within `experiments.refresh_s`. A pattern RE2 cannot match in linear time, a name
    that does not exist, or a chain over its limits is 400."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind not in ("application/json", *YAML_TYPES):
        raise InvalidInput("send the chain as application/json or application/yaml", code="invalid_routes")
    chain = parse_chain((await request.body()).decode("utf-8", errors="replace"))
    return await container.routing.set_chain(principal, collection, chain)


@router.delete("/routes")
async def clear_routes(collection: str, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """Remove the collection's routing chain."""
    return await container.routing.set_chain(principal, collection, None)


@router.get("/curated")
async def list_curated(
    collection: str,
    container: ContainerDep,
    principal: Admin,
    status_: Annotated[
        str | None, Query(alias="status", pattern="^(candidate|approved|stale|rejected)$")
    ] = None,
) -> dict[str, Any]:
    """The collection's curated answers: candidates (from reviewed corrections), approved (served),
    stale (a cited document changed since approval: not served), rejected."""
    items = await container.routing.list_curated(principal, collection, status_)
    return {"curated": [i.to_dict() for i in items]}


@router.post("/curated", status_code=status.HTTP_201_CREATED)
async def add_curated(
    collection: str,
    container: ContainerDep,
    principal: Admin,
    body: Annotated[dict[str, Any], Body(examples=[{"question": "...", "answer": "..."}])],
) -> dict[str, Any]:
    """A curated answer written by hand (a candidate until approved)."""
    item = await container.routing.add_curated(
        principal, collection, body.get("question"), body.get("answer")
    )
    return item.to_dict()


@router.post("/curated/{item_id}/{action}")
async def review_curated(
    collection: str, item_id: str, action: str, container: ContainerDep, principal: Admin
) -> dict[str, Any]:
    """`approve` (its question is embedded and its cited documents' versions recorded: served from now
    on) or `reject`."""
    if action not in ("approve", "reject"):
        raise InvalidInput("the action is approve or reject", code="invalid_action")
    return (await container.routing.review(principal, collection, item_id, action)).to_dict()


@router.get("/document-labels")
async def show_document_labels(collection: str, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """The collection's document labeler (`labeler: null` when it has none)."""
    return await container.document_labels.get(principal, collection)


@router.put("/document-labels")
async def set_document_labels(
    collection: str,
    container: ContainerDep,
    principal: Admin,
    body: Annotated[
        dict[str, Any],
        Body(examples=[{"field": "topic", "labels": {"hr": "leave, payroll", "it": "laptops, VPN"}}]),
    ],
) -> dict[str, Any]:
    """Label each new or changed document at ingestion: `field` (the metadata key), and `labels`
    (zero-shot: label -> description, the most similar at or over `min_similarity`) or `model` (a
    classifier written by `ragserver routes train`, under collections.model_roots)."""
    return await container.document_labels.set(principal, collection, parse_labeler(body))


@router.delete("/document-labels")
async def clear_document_labels(collection: str, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """Stop labelling the collection's documents (labels already written stay)."""
    return await container.document_labels.set(principal, collection, None)
