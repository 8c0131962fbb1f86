"""create_app(): builds settings, backends and services in the lifespan and wires the routers."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import install_error_handlers
from app.container import Container
from app.settings import Settings

log = logging.getLogger(__name__)


async def build_state(container: Container, *, llm=None):  # type: ignore[no-untyped-def]
    """Build every backend and service once (the lifespan calls this; tests may pass an LLM)."""
    import asyncio

    from app.history.factory import build_history_store
    from app.jobs.factory import build_job_store
    from app.llm.factory import build_llm
    from app.prompting import PromptRegistry
    from app.services.chat_service import ChatService
    from app.services.document_service import DocumentService
    from app.services.metrics import Metrics
    from app.services.retrieval_service import RetrievalService
    from app.services.state import AppState

    settings = container.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    prompts = PromptRegistry(settings.prompts_dir)
    # Fail at start-up, not on the first request, when the default prompts are wrong.
    prompts.get(settings.prompts.answer)
    prompts.get(settings.prompts.condense)
    if llm is None:
        llm = build_llm(settings.llm)
        load = getattr(llm, "load", None)
        if load is not None:
            await asyncio.to_thread(load)
    # Load the embedding model and open the store now, so the first request pays for neither.
    await asyncio.to_thread(lambda: (container.store, container.embedder, container.retriever))
    history = build_history_store(settings)
    jobs = build_job_store(settings)
    retrieval = RetrievalService(settings, container.store, container.retriever, metrics)
    documents = DocumentService(settings, container.store, container.pipeline, jobs, metrics)
    chat = ChatService(settings, llm, prompts, history, retrieval, metrics)
    return AppState(
        container=container,
        metrics=metrics,
        llm=llm,
        prompts=prompts,
        history=history,
        jobs=jobs,
        retrieval=retrieval,
        documents=documents,
        chat=chat,
    )


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
            state = getattr(scope["app"].state, "ragserver", None) if "app" in scope else None
            if state is not None:
                # The router records the matched route in the scope; unmatched paths share one label.
                path = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.requests.labels(scope["method"], path, str(status)).inc()
                state.metrics.request_latency.labels(path).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None, *, container: Container | None = None, llm=None) -> FastAPI:  # type: ignore[no-untyped-def]
    """The ragserver ASGI app. Settings are read here (from the environment / .env when not given)."""
    container = container or Container(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await build_state(container, llm=llm)
        app.state.ragserver = state
        await state.documents.start()
        try:
            yield
        finally:
            await state.documents.stop()
            state.retrieval.close()
            await state.history.aclose()
            await state.jobs.aclose()
            await state.llm.aclose()

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
