"""Typed dependencies: routes ask for a service, never for globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.container import Container
from app.services.chat_service import ChatService
from app.services.document_service import DocumentService
from app.services.retrieval_service import RetrievalService


def get_container(request: Request) -> Container:
    """The composition root the lifespan opened."""
    return request.app.state.container  # type: ignore[no-any-return]


ContainerDep = Annotated[Container, Depends(get_container)]


def get_chat(container: ContainerDep) -> ChatService:
    return container.chat


def get_documents(container: ContainerDep) -> DocumentService:
    return container.documents


def get_retrieval(container: ContainerDep) -> RetrievalService:
    return container.retrieval


ChatServiceDep = Annotated[ChatService, Depends(get_chat)]
DocumentServiceDep = Annotated[DocumentService, Depends(get_documents)]
RetrievalServiceDep = Annotated[RetrievalService, Depends(get_retrieval)]
