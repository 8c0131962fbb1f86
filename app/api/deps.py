"""Typed dependencies: routes ask for a service, never for globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services.chat_service import ChatService
from app.services.document_service import DocumentService
from app.services.retrieval_service import RetrievalService
from app.services.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.ragserver  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


def get_chat(state: StateDep) -> ChatService:
    return state.chat


def get_documents(state: StateDep) -> DocumentService:
    return state.documents


def get_retrieval(state: StateDep) -> RetrievalService:
    return state.retrieval


ChatServiceDep = Annotated[ChatService, Depends(get_chat)]
DocumentServiceDep = Annotated[DocumentService, Depends(get_documents)]
RetrievalServiceDep = Annotated[RetrievalService, Depends(get_retrieval)]
