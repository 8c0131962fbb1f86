"""Everything the server built at start-up, in one object on `app.state.ragserver`."""

from __future__ import annotations

from dataclasses import dataclass

from app.container import Container
from app.history.base import HistoryStore
from app.jobs.base import JobStore
from app.llm.base import LLM
from app.prompting import PromptRegistry
from app.services.chat_service import ChatService
from app.services.document_service import DocumentService
from app.services.metrics import Metrics
from app.services.retrieval_service import RetrievalService


@dataclass
class AppState:
    container: Container
    metrics: Metrics
    llm: LLM
    prompts: PromptRegistry
    history: HistoryStore
    jobs: JobStore
    retrieval: RetrievalService
    documents: DocumentService
    chat: ChatService
