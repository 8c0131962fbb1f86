"""Typed dependencies: routes ask for a service, never for globals.

They are `async def` although they never await: FastAPI runs a plain `def` dependency in its thread pool,
a hop to another thread and back on every request for an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.container import Container
from app.services.chat_service import ChatService
from app.services.document_service import DocumentService
from app.services.retrieval_service import RetrievalService


async def get_container(request: Request) -> Container:
    """The composition root the lifespan opened."""
    return request.app.state.container  # type: ignore[no-any-return]


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_chat(container: ContainerDep) -> ChatService:
    return container.chat


async def get_documents(container: ContainerDep) -> DocumentService:
    return container.documents


async def get_retrieval(container: ContainerDep) -> RetrievalService:
    return container.retrieval


ChatServiceDep = Annotated[ChatService, Depends(get_chat)]
DocumentServiceDep = Annotated[DocumentService, Depends(get_documents)]
RetrievalServiceDep = Annotated[RetrievalService, Depends(get_retrieval)]
