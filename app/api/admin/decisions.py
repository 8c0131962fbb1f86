"""Admin endpoints of the decision loop: the model registry, collections' answer profiles, and A/B
experiments (create, start, pause, stop, report, conclude). Admin role, scoped to the caller's tenant."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, status
from fastapi.responses import HTMLResponse, PlainTextResponse

from app.api.deps import ContainerDep
from app.api.guards import Admin
from app.experiments.html import render_report
from app.experiments.spec import parse_spec
from app.services.answer_profiles import parse_profile
from app.services.errors import InvalidInput
from app.settings import ModelEntry

router = APIRouter(prefix="/v1/admin", tags=["admin"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


# -- models ------------------------------------------------------------------------------------


@router.get("/models")
async def list_models(container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """The models this tenant may name (in a request, an answer profile or an experiment arm): the
    server's default, the packaged local models, those in its settings and those the tenant registered,
    each with provider, endpoint, `context_window`, prices per 1,000 tokens and `license`. (The
    OpenAI-compatible `/v1/models` lists collections: they are its clients' "models".)"""
    models = await container.models.list(principal.tenant)
    return {"default": container.models.default.name, "models": [m.to_dict() for m in models]}


@router.post("/models", status_code=status.HTTP_201_CREATED)
async def add_model(
    entry: ModelEntry,
    container: ContainerDep,
    principal: Admin,
    replace: Annotated[bool, Query(description="Replace the tenant's model of that name.")] = False,
) -> dict[str, Any]:
    """Register an LLM endpoint for the tenant (409 for a taken name). Its API key stays on the server:
    `api_key_env` names the environment variable that holds it."""
    return (await container.models.add(principal, entry, replace=replace)).to_dict()


@router.delete("/models/{name}")
async def remove_model(name: str, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """Forget a model the tenant registered."""
    await container.models.remove(principal, name)
    return {"name": name, "removed": True}


# -- answer profiles ---------------------------------------------------------------------------


@router.get("/collections/{collection}/profile")
async def get_profile(collection: str, container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """The collection's answer profile (`profile`: what it sets) and what a request with no fields of
    its own gets (`effective`: the profile over the server settings)."""
    return await container.profiles.get(principal, collection)


@router.put("/collections/{collection}/profile")
async def put_profile(
    collection: str,
    container: ContainerDep,
    principal: Admin,
    body: Annotated[dict[str, Any], Body(description="The whole profile: prompt, model, mode, top_k, ...")],
) -> dict[str, Any]:
    """Replace the collection's answer profile (fields left out fall back to the server settings)."""
    parse_profile(body)
    return await container.profiles.set(principal, collection, body, replace=True)


@router.patch("/collections/{collection}/profile")
async def patch_profile(
    collection: str,
    container: ContainerDep,
    principal: Admin,
    body: Annotated[dict[str, Any], Body(description="Fields to set; null unsets one.")],
) -> dict[str, Any]:
    """Change some fields of the collection's answer profile (null unsets a field)."""
    return await container.profiles.set(principal, collection, body)


# -- experiments -------------------------------------------------------------------------------


@router.get("/experiments")
async def list_experiments(container: ContainerDep, principal: Admin) -> dict[str, Any]:
    """The tenant's experiments, oldest first."""
    return {"experiments": [e.to_dict() for e in await container.experiments.list_all(principal)]}


@router.post(
    "/experiments",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": {"type": "object"}}, "application/yaml": {}},
            "required": True,
        }
    },
)
async def create_experiment(
    request: Request,
    container: ContainerDep,
    principal: Admin,
    replace: Annotated[
        bool, Query(description="Replace a draft or stopped experiment of that name.")
    ] = False,
) -> dict[str, Any]:
    """Create a draft experiment from its spec, as JSON or as the YAML file (`Content-Type:
    application/yaml`): name, collections, unit, seed, arms (name, weight, overrides), primary_metric,
    guardrails. Start it with `POST /v1/admin/experiments/{name}/start`."""
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind not in ("application/json", *YAML_TYPES):
        raise InvalidInput(
            "send the experiment as application/json or application/yaml", code="invalid_experiment"
        )
    spec = parse_spec(raw.decode("utf-8", errors="replace"))  # JSON is YAML too
    return (await container.experiments.create(principal, spec, replace=replace)).to_dict()


@router.get("/experiments/{name}")
async def get_experiment(
    name: str,
    container: ContainerDep,
    principal: Admin,
    format: Annotated[str, Query(pattern="^(json|yaml)$", description="yaml: the spec as a file.")] = "json",
) -> Any:
    """An experiment: its spec, status, stopped arms and log (`?format=yaml`: the spec as YAML)."""
    experiment = await container.experiments.get(principal, name)
    if format == "yaml":
        return PlainTextResponse(experiment.spec.to_yaml(), media_type="application/yaml")
    return experiment.to_dict()


@router.post("/experiments/{name}/conclude")
async def conclude_experiment(
    name: str,
    container: ContainerDep,
    principal: Admin,
    body: Annotated[dict[str, Any], Body(examples=[{"arm": "v4"}])],
) -> dict[str, Any]:
    """Ship an arm: its overrides become the answer profile of each of the experiment's collections
    (audited), and the experiment stops."""
    arm = body.get("arm")
    if not isinstance(arm, str) or not arm:
        raise InvalidInput('give the winning arm: {"arm": "<name>"}', code="invalid_arm")
    return await container.experiments.conclude(principal, name, arm)


@router.post("/experiments/{name}/{action}")
async def change_experiment(
    name: str, action: str, container: ContainerDep, principal: Admin
) -> dict[str, Any]:
    """`start` (draft or paused -> running), `pause`, or `stop`: every replica follows within
    `experiments.refresh_s`."""
    if action not in ("start", "pause", "stop"):
        raise InvalidInput("the action is start, pause or stop", code="invalid_action")
    return (await container.experiments.change_status(principal, name, action)).to_dict()


@router.get("/experiments/{name}/report")
async def experiment_report(
    name: str,
    container: ContainerDep,
    principal: Admin,
    format: Annotated[str, Query(pattern="^(json|html)$")] = "json",
) -> Any:
    """Per arm: units, answers and every metric, the difference to control with a 95% interval, the
    test, and an always-valid (sequential) interval; the sample-ratio-mismatch check; stopped arms.
    `?format=html`: the same as a page, with the primary metric over time."""
    report = await container.experiments.report(principal, name)
    if format == "html":
        return HTMLResponse(render_report(report))
    return report
