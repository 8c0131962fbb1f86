"""create_app(): opens the composition root (`app.container`) in the lifespan and wires the routers."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import install_error_handlers
from app.container import Container, open_container
from app.settings import Settings

log = logging.getLogger(__name__)


class RequestMetrics:
    """Counts HTTP requests by route and status and times them to the end of the response. A plain
    ASGI middleware: starlette's BaseHTTPMiddleware would pipe every streamed event through an extra
    task and memory stream."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started is a 500 to the client

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            state = getattr(scope["app"].state, "container", None) if "app" in scope else None
            if state is not None:
                # The router records the matched route in the scope; unmatched paths share one label.
                path = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.requests.labels(scope["method"], path, str(status)).inc()
                state.metrics.request_latency.labels(path).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None, *, container: Container | None = None, llm=None) -> FastAPI:  # type: ignore[no-untyped-def]
    """The ragserver ASGI app. Settings are read here (from the environment / .env when not given)."""
    graph = container or Container(settings or Settings(), llm=llm)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_container(graph, warm=True) as opened:
            app.state.container = opened
            await opened.documents.start()
            try:
                yield
            finally:
                await opened.documents.stop()

    app = FastAPI(
        title="ragserver",
        version="0.1.0",
        description="RAG application server: document ingestion, chat with citations, "
        "an OpenAI-compatible API and retrieval.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    app.add_middleware(RequestMetrics)

    from app.api.chat.router import router as chat_router
    from app.api.documents.router import router as documents_router
    from app.api.health.router import router as health_router
    from app.api.openai.router import router as openai_router
    from app.api.retrieve.router import router as retrieve_router

    for router in (health_router, documents_router, chat_router, openai_router, retrieve_router):
        app.include_router(router)
    return app
