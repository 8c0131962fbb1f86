"""create_app(): opens the composition root (`app.container`) in the lifespan and wires the routers
and middlewares (`app/api/middleware.py`: request id, metrics, JSON body cap)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Scope

from app.api.docs import install_offline_docs
from app.api.errors import install_error_handlers
from app.api.guards import check_routes_guarded
from app.api.middleware import BodyLimit, BodyTimeout, RequestContext, RequestMetrics, is_upload
from app.container import Container, open_container
from app.logging_setup import ensure_logging
from app.settings import Settings
from app.telemetry import setup_tracing

log = logging.getLogger(__name__)


def insecure_binding(settings: Settings, host: str) -> str | None:
    """Why the server must not start on `host`, or None: auth mode `none` is for loopback only, unless
    auth.allow_insecure says otherwise."""
    if settings.auth.mode != "none" or settings.auth.allow_insecure:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"refusing to serve on {host} with RAGSERVER_AUTH__MODE=none: anyone who reaches it could read and "
        "delete every document. Use RAGSERVER_AUTH__MODE=api_key (keys: `ragserver keys create`), bind "
        "127.0.0.1, or set RAGSERVER_AUTH__ALLOW_INSECURE=true if something in front authenticates."
    )


def warn_if_open(settings: Settings) -> None:
    """The loud warning of auth mode `none` (`ragserver serve` refuses it off loopback)."""
    if settings.auth.mode == "none":
        log.warning(
            "AUTH IS OFF (RAGSERVER_AUTH__MODE=none): anyone who can reach this server reads, writes and "
            "deletes everything, as the default tenant. For a first try on 127.0.0.1 only; create keys "
            "with `ragserver keys create` and set RAGSERVER_AUTH__MODE=api_key."
        )


def create_app(settings: Settings | None = None, *, container: Container | None = None, llm=None) -> FastAPI:  # type: ignore[no-untyped-def]
    """The ragserver ASGI app. Settings are read here (from the environment / .env when not given)."""
    graph = container or Container(settings or Settings(), llm=llm)

    server = graph.settings.server

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # `ragserver serve` configured logging already; under a bare `uvicorn app.main:app` do it here.
        ensure_logging(server.log_level, server.log_format)
        check_routes_guarded(app)  # again: routes may have been added after create_app
        warn_if_open(graph.settings)
        setup_tracing(graph.settings)
        async with open_container(graph, warm=True) as opened:
            app.state.container = opened
            await opened.runner.start()
            await opened.traces.start()
            await opened.experiments.start()
            log.info("ragserver ready (data dir %s)", opened.settings.data_dir)
            try:
                yield
            finally:
                # Requests still running were cancelled by the server (after server.shutdown_timeout_s),
                # which stopped their generations; the job runner checkpoints its jobs here.
                log.info("ragserver shutting down")
                await opened.runner.stop()
                await opened.traces.stop()

    app = FastAPI(
        title="ragserver",
        version="0.1.0",
        description="RAG application server: document ingestion, chat with citations, "
        "an OpenAI-compatible API and retrieval.",
        lifespan=lifespan,
        docs_url=None,  # served from packaged assets below: FastAPI's pages load them from a CDN
        redoc_url=None,
    )
    install_offline_docs(app)
    install_error_handlers(app)

    def json_body_limit(_: Scope) -> int:
        return graph.settings.limits.max_json_body_kb * 1024  # read per request: settings may change live

    # add_middleware wraps what is there: the last added is outermost.
    app.add_middleware(BodyLimit, limit_bytes=json_body_limit, exempt=is_upload)
    app.add_middleware(
        BodyTimeout,
        timeout_s=lambda: graph.settings.limits.body_timeout_s,
        min_rate=lambda: graph.settings.limits.body_min_rate_bytes_s,
    )
    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestContext)

    from app.api.admin.decisions import router as decisions_router
    from app.api.admin.router import router as admin_router
    from app.api.admin.routing import router as routing_router
    from app.api.chat.router import router as chat_router
    from app.api.collections.router import router as collections_router
    from app.api.documents.router import router as documents_router
    from app.api.health.router import router as health_router
    from app.api.openai.responses import router as responses_router
    from app.api.openai.router import router as openai_router
    from app.api.retrieve.router import router as retrieve_router
    from app.api.traces.router import router as traces_router
    from app.api.ui.router import router as ui_router

    for router in (
        health_router,
        documents_router,
        collections_router,
        chat_router,
        openai_router,
        responses_router,
        retrieve_router,
        traces_router,
        admin_router,
        decisions_router,
        routing_router,
        ui_router,
    ):
        app.include_router(router)
    check_routes_guarded(app)
    return app
