"""The chat use case: condense -> retrieve -> prompt -> generate -> cite -> remember.

No FastAPI here: the HTTP routers, the OpenAI-compatible API and the eval harness all call `ChatService`,
so what is measured offline is what serves online.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from app.history.base import HistoryStore, Turn, trim_to_token_budget
from app.llm.base import LLM, Usage
from app.prompting import PromptRegistry
from app.services.chat_types import (
    ChatEvent,
    ChatQuery,
    ChatResult,
    Citation,
    CitationsEvent,
    DoneEvent,
    ResolvedChatQuery,
    TokenEvent,
)
from app.services.metrics import Metrics
from app.services.retrieval_service import RetrievalService
from app.settings import Settings

_MARKER = re.compile(r"\[(\d{1,3})\]")


class ConversationNotFound(LookupError):
    """A conversation id that does not exist (or expired)."""


@dataclass
class _Prepared:
    query: ResolvedChatQuery
    conversation_id: str
    collection: str
    search_query: str
    sources: list[Citation]
    messages: list[dict[str, str]]
    prompt_ref: str
    retrieval: dict[str, Any]
    started: float


def cited(answer: str, sources: list[Citation]) -> list[Citation]:
    """Sources the answer cites with [n] markers; all sources given when it cites none."""
    by_n = {s.n: s for s in sources}
    numbers = []
    for match in _MARKER.finditer(answer):
        n = int(match.group(1))
        if n in by_n and n not in numbers:
            numbers.append(n)
    return [by_n[n] for n in numbers] if numbers else list(sources)


class ChatService:
    """Answers questions over a collection with citations and server-side history."""

    def __init__(
        self,
        settings: Settings,
        llm: LLM,
        prompts: PromptRegistry,
        history: HistoryStore,
        retrieval: RetrievalService,
        metrics: Metrics,
    ):
        self.settings = settings
        self.llm = llm
        self.prompts = prompts
        self.history = history
        self.retrieval = retrieval
        self.metrics = metrics

    async def chat(self, query: ChatQuery) -> ChatResult:
        """A complete answer."""
        prepared = await self._prepare(query)
        started = time.perf_counter()
        completion = await self.llm.complete(
            prepared.messages, max_tokens=prepared.query.max_tokens, temperature=prepared.query.temperature
        )
        self.metrics.llm_latency.observe(time.perf_counter() - started)
        return await self._finish(prepared, completion.text, completion.model, completion.usage)

    async def stream(self, query: ChatQuery) -> AsyncIterator[ChatEvent]:
        """The answer as it is generated: `TokenEvent`s, then a `CitationsEvent`, then a `DoneEvent`."""
        prepared = await self._prepare(query)
        parts: list[str] = []
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        model = self.llm.model_name
        started = time.perf_counter()
        first = True
        async for delta in self.llm.stream(
            prepared.messages, max_tokens=prepared.query.max_tokens, temperature=prepared.query.temperature
        ):
            if delta.model:
                model = delta.model
            if delta.usage is not None:
                usage = delta.usage
            if delta.text:
                if first:
                    self.metrics.llm_ttft.observe(time.perf_counter() - started)
                    first = False
                parts.append(delta.text)
                yield TokenEvent(delta.text)
        self.metrics.llm_latency.observe(time.perf_counter() - started)
        result = await self._finish(prepared, "".join(parts), model, usage)
        yield CitationsEvent(result.citations)
        yield DoneEvent(result)

    async def get_conversation(self, conversation_id: str) -> list[Turn]:
        turns = await self.history.get(conversation_id)
        if turns is None:
            raise ConversationNotFound(f"conversation {conversation_id!r} not found")
        return turns

    async def delete_conversation(self, conversation_id: str) -> None:
        if not await self.history.delete(conversation_id):
            raise ConversationNotFound(f"conversation {conversation_id!r} not found")

    async def _prepare(self, query: ChatQuery) -> _Prepared:
        started = time.perf_counter()
        query = query.resolve(self.settings)
        answer_prompt = self.prompts.get(query.prompt)
        collection = self.retrieval.resolve_collection(query.collection)
        conversation_id = query.conversation_id or uuid.uuid4().hex
        if query.history is not None:
            past = [Turn(role=m["role"], content=m["content"], created_at=0.0) for m in query.history]
        elif query.conversation_id:
            stored = await self.history.get(query.conversation_id)
            if stored is None:
                raise ConversationNotFound(f"conversation {query.conversation_id!r} not found")
            past = stored
        else:
            past = []
        past = trim_to_token_budget(past, self.settings.history.token_budget)
        history = [{"role": t.role, "content": t.content} for t in past]
        search_query = await self._condense(query.message, history) if history else query.message
        top_k = query.top_k
        hits = await self.retrieval.retrieve(
            collection, search_query, top_k=top_k, mode=query.mode, filters=query.filters
        )
        sources = [Citation.from_hit(i, hit) for i, hit in enumerate(hits, start=1)]
        messages = answer_prompt.render(
            sources=[{"n": s.n, "title": s.title, "source": s.source, "text": s.text} for s in sources],
            history=history,
            question=query.message,
        )
        return _Prepared(
            query=query,
            conversation_id=conversation_id,
            collection=collection,
            search_query=search_query,
            sources=sources,
            messages=messages,
            prompt_ref=answer_prompt.ref,
            retrieval={
                "mode": query.mode,
                "top_k": top_k,
                "filters": query.filters or {},
                "query": search_query,
            },
            started=started,
        )

    async def _condense(self, question: str, history: list[dict[str, str]]) -> str:
        """A standalone search query from a follow-up and the conversation so far."""
        prompt = self.prompts.get(self.settings.prompts.condense)
        completion = await self.llm.complete(prompt.render(history=history, question=question), max_tokens=64)
        condensed = (
            completion.text.strip().strip('"').splitlines()[0].strip() if completion.text.strip() else ""
        )
        # A tiny model may return nothing useful; the follow-up plus the last user turn still retrieves.
        if len(condensed) < 3:
            last_user = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
            return f"{last_user} {question}".strip()
        return condensed

    async def _finish(self, prepared: _Prepared, answer: str, model: str, usage: Usage) -> ChatResult:
        answer = answer.strip()
        citations = cited(answer, prepared.sources)
        response_id = f"resp_{uuid.uuid4().hex}"
        usage_dict = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        self.metrics.tokens.labels(kind="prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(kind="completion").inc(usage.completion_tokens)
        result = ChatResult(
            conversation_id=prepared.conversation_id,
            response_id=response_id,
            answer=answer,
            citations=citations,
            prompt=prepared.prompt_ref,
            model=model,
            usage=usage_dict,
            collection=prepared.collection,
            retrieval=prepared.retrieval,
            query=prepared.search_query,
            contexts=prepared.sources,
            latency_ms=(time.perf_counter() - prepared.started) * 1000,
        )
        if prepared.query.remember and prepared.query.history is None:
            now = time.time()
            # Every answer records what produced it (prompt, model, retrieval settings, cited chunks).
            record = {
                "response_id": response_id,
                "prompt": prepared.prompt_ref,
                "model": model,
                "collection": prepared.collection,
                "retrieval": prepared.retrieval,
                "citations": [c.chunk_id for c in citations],
            }
            await self.history.append(
                prepared.conversation_id,
                [
                    Turn(role="user", content=prepared.query.message, created_at=now),
                    Turn(role="assistant", content=answer, created_at=now, metadata=record),
                ],
            )
        return result
