"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ContainerDep
from app.api.errors import error_body
from app.api.guards import authorize_metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(container: ContainerDep) -> JSONResponse:
    """Vector store, history store, job store and LLM reachable; 503 naming what is down."""

    async def check(coro) -> bool:  # type: ignore[no-untyped-def]
        try:
            return bool(await asyncio.wait_for(coro, timeout=5))
        except Exception:
            return False

    checks = {
        "vector_store": await check(asyncio.to_thread(container.store.heartbeat)),
        "history_store": await check(container.history.ping()),
        "job_store": await check(container.jobs.ping()),
        "llm": await check(container.llm.health()),
    }
    if container.job_queue is not None:
        checks["job_queue"] = await check(container.job_queue.ping())
    down = [name for name, ok in checks.items() if not ok]
    if down:
        body = {
            "status": "unavailable",
            "checks": checks,
            **error_body("not_ready", f"not ready: {', '.join(down)} unreachable"),
        }
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", dependencies=[Depends(authorize_metrics)])
async def metrics(container: ContainerDep) -> Response:
    """Prometheus metrics: an admin key or the metrics token (auth.metrics_token)."""
    return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)
