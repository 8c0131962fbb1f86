"""The chat use case: condense -> retrieve -> prompt -> generate -> cite -> remember.

No FastAPI here: the HTTP routers, the OpenAI-compatible API and the eval harness all call `ChatService`,
so what is measured offline is what serves online. So are the bounds: a question size limit, a max_tokens
cap, a total deadline per request (waiting for a slot, retrieval and generation, streaming included), a cap
on generations in flight and waiting (`app/services/limits.py`), and a prompt fitted to the model's
context window (`app/services/prompt_budget.py`).

History store down: a follow-up whose history cannot be read is refused (503, `history_unavailable`)
before the LLM runs; a new answer whose history write fails is still returned, with `history_saved`
false. An answer is never generated and then lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from app.auth.principal import Principal
from app.history.base import HistoryStore, HistoryStoreError, Turn, trim_to_token_budget
from app.llm.base import (
    LLM,
    NEXT_TURN,
    Messages,
    Usage,
    approx_prompt_tokens,
    approx_tokens,
    context_window_of,
    prompt_token_counter,
)
from app.prompting import PromptRegistry, neutral_inputs
from app.services.answer_profiles import AnswerProfile
from app.services.answer_text import (
    ABSTAINED,
    AnswerFilter,
    filtered,
    is_refusal,
    is_yes_no_question,
    renumbered,
    says_dont_know,
    tidy,
)
from app.services.answerability import (
    AnswerabilityModel,
    QuestionEvidence,
    evidence,
    load_model,
    question_evidence,
)
from app.services.attribution import attribute, grounding
from app.services.chat_types import (
    ChatEvent,
    ChatQuery,
    ChatResult,
    Citation,
    CitationsEvent,
    DoneEvent,
    ResolvedChatQuery,
    StartEvent,
    TokenEvent,
    new_response_id,
)
from app.services.errors import Unavailable
from app.services.followups import deterministic_rewrite, usable_rewrite
from app.services.limits import (
    Deadline,
    GenerationLimiter,
    OverLimit,
    RequestTimedOut,
    check_filters,
    check_size,
)
from app.services.metrics import Metrics
from app.services.prompt_budget import FittedPrompt, History, fit_prompt
from app.services.retrieval_service import RetrievalService
from app.settings import Settings
from app.telemetry import llm_request_attributes, llm_response_attributes, tracer
from ingest.errors import DomainError

if TYPE_CHECKING:
    from app.auth.audit import AuditLog
    from app.auth.rate_limits import RateLimits
    from app.llm.registry import ModelRegistry, RegisteredModel
    from app.services.answer_profiles import ProfileService
    from app.services.experiments import Enrollment, ExperimentService
    from app.services.routing import Routed, RoutingService
    from app.services.traces import TraceService

log = logging.getLogger(__name__)

T = TypeVar("T")

# What the condense step (a follow-up -> a standalone search query) may generate.
CONDENSE_MAX_TOKENS = 64
# What a client is told to wait when the history store is down.
HISTORY_RETRY_AFTER_S = 5


def within_scope(turns: list[Turn], principal: Principal) -> bool:
    """Whether every collection `turns` were answered over is one `principal`'s key may touch: a
    conversation carries its collections' text in its answers, so it is bound to them."""
    if principal.collections is None:
        return True
    held = {t.metadata.get("collection") for t in turns if t.role == "assistant"}
    return all(isinstance(c, str) and principal.may_use(c) for c in held)


class ConversationNotFound(DomainError, LookupError):
    """A conversation id that does not exist (or expired)."""

    kind, code = "not_found", "conversation_not_found"


@dataclass
class _Plan:
    """A request once admitted: its query with every default filled in, the model that answers it, and
    its experiment arm."""

    query: ResolvedChatQuery
    model: RegisteredModel
    llm: LLM
    conversation_id: str  # the request's, or the new conversation's
    enrollment: Enrollment | None = None
    # Why a request over a collection under experiment was not enrolled (it named its own prompt, ...).
    not_enrolled: str | None = None
    # What the request named itself (prompt, model, mode): a routing policy does not override those.
    named: tuple[str, ...] = ()
    # The collection's routing chain's decisions (None: no chain ran).
    routed: Routed | None = None
    # False when the profile (or an experiment arm) turns the routing chain off.
    routing: bool = True


@dataclass
class _Prepared:
    plan: _Plan
    query: ResolvedChatQuery
    conversation_id: str
    history_key: str  # where the conversation is stored (`Principal.conversation_key`)
    collection: str  # as the caller names it
    search_query: str
    sources: list[Citation]
    messages: list[dict[str, str]]
    prompt_ref: str
    retrieval: dict[str, Any]
    started: float
    store: str = ""  # the collection's store name (tenant-qualified)
    history: list[dict[str, str]] | None = None  # the turns before the question
    retrieve_ms: float | None = None
    # The question's evidence, measured before generation (None when no model judges it).
    before: QuestionEvidence | None = None
    # What was recorded when the sources were judged to hold no answer before generation (no LLM call).
    unanswerable: dict[str, Any] | None = None


def conversation_unit(history: list[dict[str, str]], message: str, principal: Principal) -> str:
    """The experiment unit of a stateless conversation (the OpenAI-compatible APIs send the history with
    each request, and no id): its first user message (`message` on the first turn), with the caller's
    tenant. Every turn of that conversation gets the same arm; two conversations opening with the same
    words share one."""
    first = next((m.get("content", "") for m in history if m.get("role") == "user"), message)
    digest = hashlib.sha256(f"{principal.tenant}\x00{first}".encode()).hexdigest()[:32]
    return f"stateless:{digest}"


def trim_transcript(answer: str) -> str:
    """The answer without a transcript the model went on to write ("User: ...", "Question: ...")."""
    match = NEXT_TURN.search(answer)
    return (answer[: match.start()] if match else answer).strip()


class ChatService:
    """Answers questions over a collection with citations and server-side history."""

    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        prompts: PromptRegistry,
        history: HistoryStore,
        retrieval: RetrievalService,
        metrics: Metrics,
        *,
        profiles: ProfileService,
        experiments: ExperimentService,
        routing: RoutingService | None = None,
        rate_limits: RateLimits | None = None,
        audit: AuditLog | None = None,
        traces: TraceService | None = None,
    ):
        self.settings = settings
        self.traces = traces
        self.rate_limits = rate_limits
        self.audit = audit
        self.models = models
        self.profiles = profiles
        self.experiments = experiments
        self.routing = routing
        self.prompts = prompts
        self.history = history
        self.retrieval = retrieval
        self.metrics = metrics
        self.limiter = GenerationLimiter(settings.limits, metrics)
        if settings.answers.abstain:  # a missing or incompatible model fails the start, not a request
            load_model(settings.answers.abstain_model)

    async def chat(
        self, query: ChatQuery, *, principal: Principal, response_id: str | None = None, api: str = "chat"
    ) -> ChatResult:
        """A complete answer from `principal`'s collection, stored as response `response_id` (a new id
        when None) from `api`. Raises PayloadTooLarge / OverLimit for a request over a limit,
        RateLimited past the key's tokens a minute, Unavailable when every generation slot is taken,
        RequestTimedOut past the deadline."""
        deadline = Deadline(self.settings.limits.request_timeout_s)
        plan = await self._route(query, await self._admit(query, principal), principal)
        finish: str | None
        if plan.routed is not None and plan.routed.final:
            prepared = self._routed(plan, principal)
            text, model, usage, finish = plan.routed.answer or "", "none", Usage(0, 0), "stop"
        else:
            try:
                prepared, text, model, usage, finish = await deadline.run(self._generate(plan, principal))
            except RequestTimedOut:
                self._timed_out(deadline)
                await self._failed(plan, principal, api)
                raise
            except Exception:
                await self._failed(plan, principal, api)
                raise
        result = self._result(prepared, text, model, usage, finish, response_id)
        await self._spend(principal, usage)
        result.history_saved = await self._remember(prepared, result)
        self._log_answer(result)
        await self._trace(result, prepared, principal, api, ttft_ms=None)
        return result

    async def stream(
        self, query: ChatQuery, *, principal: Principal, response_id: str | None = None, api: str = "chat"
    ) -> AsyncGenerator[ChatEvent, None]:
        """The answer as it is generated: a `StartEvent` (the response and conversation ids) once the
        sources are found, `TokenEvent`s, then a `CitationsEvent`, then a `DoneEvent`.

        The deadline bounds each step, not the time the consumer takes between events; closing the
        stream early (a client gone) stops the generation and saves nothing."""
        deadline = Deadline(self.settings.limits.request_timeout_s)
        plan = await self._route(query, await self._admit(query, principal), principal)
        response_id = response_id or new_response_id()
        ttft_ms: float | None = None
        enrolled = plan.enrollment
        if plan.routed is not None and plan.routed.final:  # a rule or a curated answer: no LLM
            prepared = self._routed(plan, principal)
            yield StartEvent(
                response_id,
                prepared.conversation_id,
                experiment=enrolled.experiment if enrolled else None,
                arm=enrolled.arm if enrolled else None,
            )
            yield TokenEvent(plan.routed.answer or "")
            ttft_ms = (time.perf_counter() - prepared.started) * 1000
            result = self._result(
                prepared, plan.routed.answer or "", "none", Usage(0, 0), "stop", response_id
            )
            result.history_saved = await self._remember(prepared, result)
            self._log_answer(result)
            await self._trace(result, prepared, principal, api, ttft_ms=ttft_ms)
            yield CitationsEvent(result.citations)
            yield DoneEvent(result)
            return
        try:
            await deadline.run(self.limiter.acquire(principal.tenant))
            try:
                prepared = await deadline.run(self._prepare(plan, principal))
                yield StartEvent(
                    response_id,
                    prepared.conversation_id,
                    experiment=enrolled.experiment if enrolled else None,
                    arm=enrolled.arm if enrolled else None,
                )
                parts: list[str] = []
                finish: str | None = None
                usage = Usage(prompt_tokens=0, completion_tokens=0)
                model = plan.llm.model_name
                if self._abstain_before(prepared):  # nothing drafted, so nothing streamed is withdrawn
                    ttft_ms = (time.perf_counter() - prepared.started) * 1000
                    yield TokenEvent(ABSTAINED)
                else:
                    # Closed with the stream: a client gone stops the generation.
                    async with contextlib.aclosing(self._stream_draft(prepared, deadline, parts)) as draft:
                        async for piece in draft:
                            if isinstance(piece, TokenEvent):
                                if ttft_ms is None:
                                    ttft_ms = (time.perf_counter() - prepared.started) * 1000
                                yield piece
                            else:
                                model, usage, finish = piece
            finally:
                self.limiter.release(principal.tenant)
        except RequestTimedOut:
            self._timed_out(deadline)
            await self._failed(plan, principal, api)
            raise
        except Exception:
            await self._failed(plan, principal, api)
            raise
        result = self._result(prepared, "".join(parts), model, usage, finish, response_id)
        await self._spend(principal, usage)
        result.history_saved = await self._remember(prepared, result)
        self._log_answer(result)
        await self._trace(result, prepared, principal, api, ttft_ms=ttft_ms)
        yield CitationsEvent(result.citations)
        yield DoneEvent(result)

    async def _stream_draft(
        self, prepared: _Prepared, deadline: Deadline, parts: list[str]
    ) -> AsyncGenerator[TokenEvent | tuple[str, Usage, str | None], None]:
        """The LLM's answer as `TokenEvent`s (filtered; the raw text appended to `parts`), then one
        (model, usage, finish_reason) tuple."""
        finish: str | None = None
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        llm = prepared.plan.llm
        model = llm.model_name
        shown = AnswerFilter([s.n for s in prepared.sources])
        started = time.perf_counter()
        span = self._llm_span(prepared)
        deltas = llm.stream(
            prepared.messages, max_tokens=prepared.query.max_tokens, temperature=prepared.query.temperature
        )
        try:
            while True:
                try:
                    delta = await deadline.run(anext(deltas))
                except StopAsyncIteration:
                    break
                if delta.model:
                    model = delta.model
                if delta.usage is not None:
                    usage = delta.usage
                if delta.finish_reason:
                    finish = delta.finish_reason
                if delta.text:
                    if not parts:
                        self.metrics.llm_ttft.observe(time.perf_counter() - started)
                    parts.append(delta.text)
                    if piece := shown.feed(delta.text):
                        yield TokenEvent(piece)
            if rest := shown.flush():
                yield TokenEvent(rest)
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                await aclose()
            span.set_attributes(llm_response_attributes(model, finish, usage))
            span.end()
        self.metrics.llm_latency.observe(time.perf_counter() - started)
        yield model, usage, finish

    def _answerability(self) -> AnswerabilityModel | None:
        answers = self.settings.answers
        return load_model(answers.abstain_model) if answers.abstain else None

    def _abstain_before(self, prepared: _Prepared) -> bool:
        """Whether the sources hold no answer, judged from the question and the sources alone (so the LLM
        is not called); the evidence goes to the answer's `retrieval.answerability` either way later."""
        fitted = self._answerability()
        if fitted is None or not prepared.sources:
            return False
        found = prepared.before = question_evidence(prepared.search_query, prepared.sources)
        flagged, p = fitted.abstain_before(found)
        if flagged:
            prepared.unanswerable = {
                **found.to_dict(),
                "p_unanswerable": round(p, 4),
                "abstained": True,
                "stage": "before",
            }
        return flagged

    def _llm_span(self, prepared: _Prepared) -> Any:
        """The `chat <model>` span of the answer's LLM call (ended by the caller)."""
        model = prepared.plan.llm.model_name
        attributes = llm_request_attributes(
            "chat",
            prepared.plan.model.entry.provider,
            model,
            prepared.query.max_tokens,
            prepared.query.temperature,
        )
        return tracer().start_span(f"chat {model}", attributes=attributes)

    async def _failed(self, plan: _Plan, principal: Principal, api: str) -> None:
        """Count a failed answer; an enrolled one is also traced (its arm's error rate needs it)."""
        if self.traces is None:
            return
        self.traces.answer_failed(plan.query.prompt, plan.llm.model_name)
        if plan.enrollment is not None:
            await self.traces.record_failure(
                principal=principal,
                api=api,
                store_name=principal.collection(plan.query.collection),
                question=plan.query.message,
                prompt=plan.query.prompt,
                model=plan.model.name,
                conversation_id=plan.conversation_id,
                enrollment=plan.enrollment,
            )

    async def _trace(
        self,
        result: ChatResult,
        prepared: _Prepared,
        principal: Principal,
        api: str,
        *,
        ttft_ms: float | None,
    ) -> None:
        """Store how the answer was made (never fails the answer)."""
        if self.traces is None:
            return
        from app.services.traces import Timings

        plan = prepared.plan
        params: dict[str, Any] = {
            "max_tokens": prepared.query.max_tokens,
            "temperature": prepared.query.temperature,
            "model": plan.model.name,  # the registry's name (`result.model`: what the endpoint answered as)
        }
        if plan.not_enrolled:
            params["experiment"] = {"enrolled": False, "reason": plan.not_enrolled}
        if plan.routed is not None:
            params["routing"] = {"answered_by": result.answered_by, "route": result.route}
        await self.traces.record(
            result,
            principal=principal,
            api=api,
            store_name=prepared.store,
            question=prepared.query.message,
            history=prepared.history or [],
            params=params,
            timings=Timings(prepared.retrieve_ms, ttft_ms, result.latency_ms),
            unit=plan.enrollment.unit if plan.enrollment else None,
            cost=plan.model.cost(Usage(result.usage["prompt_tokens"], result.usage["completion_tokens"])),
        )

    async def get_conversation(self, conversation_id: str, *, principal: Principal) -> list[Turn]:
        """`principal`'s conversation: ConversationNotFound for another tenant's id, and for one held over
        a collection outside the key's list (to that key it does not exist)."""
        turns = await self._read_history(principal.conversation_key(conversation_id))
        if turns is None or not within_scope(turns, principal):
            raise ConversationNotFound(f"conversation {conversation_id!r} not found")
        return turns

    async def delete_conversation(self, conversation_id: str, *, principal: Principal) -> None:
        async with self._audited(principal, "conversation.delete", conversation_id):
            if principal.collections is not None:  # a key limited to some collections: look first
                await self.get_conversation(conversation_id, principal=principal)
            deleted = await self._history_call(
                "delete", self.history.delete(principal.conversation_key(conversation_id))
            )
            if not deleted:
                raise ConversationNotFound(f"conversation {conversation_id!r} not found")

    def _audited(self, principal: Principal, action: str, object_id: str) -> AbstractAsyncContextManager[Any]:
        if self.audit is None:
            return nullcontext()
        return self.audit.action(principal, action, object_id=object_id)

    # -- limits ----------------------------------------------------------------------------------

    async def _admit(self, query: ChatQuery, principal: Principal) -> _Plan:
        """The request's plan (its defaults, its model, its experiment arm), once it is within the limits
        (checked before any work)."""
        limits = self.settings.limits
        check_size(query.message, limits.max_question_chars, "question")
        check_filters(query.filters, limits)
        if query.max_tokens is not None and query.max_tokens > limits.max_tokens:
            raise OverLimit(
                f"max_tokens {query.max_tokens} is over this server's limit of {limits.max_tokens}"
            )
        collection = query.collection or self.settings.server.default_collection
        profile = await self.profiles.for_store(principal.collection(collection))
        conversation_id = query.conversation_id or uuid.uuid4().hex
        unit = conversation_id
        if query.history is not None and not query.conversation_id:
            unit = conversation_unit(query.history, query.message, principal)
        if query.overrides is not None:
            profile = query.overrides.over(profile)
        # A request naming its own prompt, model or mode is not enrolled: it asked for something specific.
        named = [f for f in ("prompt", "model", "mode", "overrides") if getattr(query, f)]
        enrollment = None
        if not named:
            enrollment = await self.experiments.enroll(principal, collection, conversation=unit)
            if enrollment is not None:
                profile = enrollment.overrides.over(profile)
        resolved = query.resolve(self.settings, profile)
        if resolved.max_tokens > limits.max_tokens:  # a default (llm.max_tokens) above the cap
            resolved = dataclasses.replace(resolved, max_tokens=limits.max_tokens)
        if resolved.history is not None:  # a stateless caller's history: its newest turns at most
            newest = resolved.history[-self.settings.history.max_turns :]
            resolved = dataclasses.replace(resolved, history=newest)
        if self.rate_limits is not None:
            await self.rate_limits.check_tokens(principal)
        model = await self.models.get(principal.tenant, resolved.model)
        not_enrolled = None
        if named and await self.experiments.enroll(principal, collection, conversation=unit, count=False):
            not_enrolled = f"the request named its own {', '.join(named)}"
        return _Plan(
            query=resolved,
            model=model,
            llm=await self.models.llm(principal.tenant, model),
            conversation_id=conversation_id,
            enrollment=enrollment,
            not_enrolled=not_enrolled,
            named=tuple(named),
            routing=profile.routing is not False,
        )

    async def _route(self, query: ChatQuery, plan: _Plan, principal: Principal) -> _Plan:
        """The collection's routing chain before retrieval: a final answer (a rule's, a curated one), or
        the plan again for what a rule steered to (another collection, profile or model; such a request
        is not enrolled in an experiment), with the LLM stage's model policy."""
        if self.routing is None or not plan.routing:
            return plan
        routed = await self.routing.route(principal.collection(plan.query.collection), plan.query.message)
        steered = routed.collection or routed.profile or routed.model
        if steered and not routed.final:
            overrides = routed.profile or AnswerProfile()
            if routed.model:
                overrides = AnswerProfile(model=routed.model).over(overrides)
            changed = dataclasses.replace(
                query,
                collection=routed.collection or query.collection,
                overrides=overrides.over(query.overrides) if query.overrides else overrides,
            )
            plan = await self._admit(changed, principal)
        plan.routed = routed if routed.decisions else None
        return plan

    def _routed(self, plan: _Plan, principal: Principal) -> _Prepared:
        """What a final routing decision answers with, in the shape of a prepared request (no sources
        retrieved, no prompt rendered)."""
        routed = plan.routed
        assert routed is not None
        return _Prepared(
            plan=plan,
            query=plan.query,
            conversation_id=plan.conversation_id,
            history_key=principal.conversation_key(plan.conversation_id),
            collection=plan.query.collection,
            search_query=plan.query.message,
            sources=[],
            messages=[],
            prompt_ref=f"{routed.answered_by}:{routed.route}",
            retrieval={"routing": routed.decisions},
            started=time.perf_counter(),
            store=principal.collection(plan.query.collection),
        )

    async def _spend(self, principal: Principal, usage: Usage) -> None:
        if self.rate_limits is not None:
            await self.rate_limits.spend_tokens(principal, usage.completion_tokens)

    def _timed_out(self, deadline: Deadline) -> None:
        self.metrics.chat_aborted.labels(reason="timeout").inc()
        log.warning("chat request stopped at its %g s deadline", deadline.seconds)

    # -- the pipeline ----------------------------------------------------------------------------

    async def _generate(
        self, plan: _Plan, principal: Principal
    ) -> tuple[_Prepared, str, str, Usage, str | None]:
        """Prepare and generate under one generation slot."""
        async with self.limiter.slot(principal.tenant):
            prepared = await self._prepare(plan, principal)
            if self._abstain_before(prepared):
                return prepared, "", plan.llm.model_name, Usage(prompt_tokens=0, completion_tokens=0), "stop"
            started = time.perf_counter()
            span = self._llm_span(prepared)
            try:
                completion = await plan.llm.complete(
                    prepared.messages,
                    max_tokens=prepared.query.max_tokens,
                    temperature=prepared.query.temperature,
                )
                span.set_attributes(
                    llm_response_attributes(completion.model, completion.finish_reason, completion.usage)
                )
            finally:
                span.end()
            self.metrics.llm_latency.observe(time.perf_counter() - started)
        return prepared, completion.text, completion.model, completion.usage, completion.finish_reason

    async def _prepare(self, plan: _Plan, principal: Principal) -> _Prepared:
        started = time.perf_counter()
        query, llm = plan.query, plan.llm
        answer_prompt = self.prompts.get(query.prompt)
        # The store name of the caller's collection: the principal decides, not the client.
        store = await self.retrieval.resolve_collection(query.collection, principal=principal)
        conversation_id = plan.conversation_id
        if query.history is not None:
            past = [Turn(role=m["role"], content=m["content"], created_at=0.0) for m in query.history]
        elif query.conversation_id:
            past = await self.get_conversation(query.conversation_id, principal=principal)
        else:
            past = []
        past = trim_to_token_budget(past, self.settings.history.token_budget, approx_tokens)
        history = [{"role": t.role, "content": t.content} for t in past]

        # What the server says about the question, for the prompt versions that declare it (answer@v6).
        told = {"yes_no": is_yes_no_question(query.message)} if answer_prompt.declares("yes_no") else {}

        def render(history: History, sources: list[Citation]) -> Messages:
            # Neutralised here, for every prompt version: a source or a turn cannot forge the prompt's fences.
            return answer_prompt.render(
                **neutral_inputs(
                    sources=[s.model_dump(include={"n", "title", "source", "text"}) for s in sources],
                    history=history,
                    question=query.message,
                ),
                **told,
            )

        if history:  # a question with no room to be answered is refused before the condense call
            await self._fit(llm, render, [], [], query.max_tokens)
            search_query = await self._condense(llm, plan.model, query.message, history)
        else:
            search_query = query.message
        top_k = query.top_k
        retrieve_started = time.perf_counter()
        retrieved = await self.retrieval.retrieve(
            store, search_query, top_k=top_k, mode=query.mode, filters=query.filters, fusion=query.fusion
        )
        hits = retrieved.hits
        retrieve_ms = (time.perf_counter() - retrieve_started) * 1000
        sources = [Citation.from_hit(i, hit) for i, hit in enumerate(hits, start=1)]
        if plan.routed is not None and plan.routed.policy is not None and "model" not in plan.named:
            llm = await self._apply_model_policy(plan, principal, max((h.score for h in hits), default=None))
        # History gives way first, then the lowest-ranked sources; never the system message or question.
        fitted = await self._fit(llm, render, history, sources, query.max_tokens)
        retrieval: dict[str, Any] = {
            "mode": query.mode,
            "top_k": top_k,
            "filters": query.filters or {},
            "query": search_query,
            "collection_version": retrieved.version,
        }
        if query.fusion:
            retrieval["fusion"] = query.fusion
        return _Prepared(
            plan=plan,
            query=query,
            conversation_id=conversation_id,
            history_key=principal.conversation_key(conversation_id),
            collection=query.collection,
            search_query=search_query,
            sources=fitted.sources,
            messages=fitted.messages,
            prompt_ref=answer_prompt.ref,
            retrieval=retrieval,
            started=started,
            store=store,
            history=history,
            retrieve_ms=retrieve_ms,
        )

    async def _apply_model_policy(self, plan: _Plan, principal: Principal, top_score: float | None) -> LLM:
        """The model the chain's policy picks now that the top score is known (the plan's model when it
        names none); the plan's model stands behind it if it fails."""
        routed = plan.routed
        assert routed is not None and self.routing is not None
        name, why = self.routing.pick_model(routed.policy, plan.query.message, top_score)
        decision: dict[str, Any] = {"stage": "llm", "id": "model_policy", "why": why, "top_score": top_score}
        if name is not None and name != plan.model.name:
            from app.llm.fallback import FallbackLLM

            picked = await self.models.get(principal.tenant, name)
            plan.llm = FallbackLLM(await self.models.llm(principal.tenant, picked), plan.llm)
            plan.model = picked
        decision["model"] = plan.model.name
        routed.decisions.append(decision)
        return plan.llm

    async def _fit(
        self,
        llm: LLM,
        render: Callable[[History, list[Citation]], Messages],
        history: History,
        sources: list[Citation],
        max_tokens: int,
    ) -> FittedPrompt[Citation]:
        """`render`'s prompt fitted to the model's context window minus `max_tokens` (off the event loop
        when the model counts with its tokenizer, as the local one does)."""
        budget = context_window_of(llm, self.settings.llm.context_window) - max_tokens
        count = prompt_token_counter(llm)
        fit = functools.partial(
            fit_prompt, render, count, history, sources, budget, source_text=lambda s: s.text
        )
        # A word-count estimate costs less than the hop to a worker thread and back.
        return fit() if count is approx_prompt_tokens else await asyncio.to_thread(fit)

    async def _condense(
        self, llm: LLM, model: RegisteredModel, question: str, history: list[dict[str, str]]
    ) -> str:
        """A standalone search query from a follow-up and the conversation so far."""
        prompt = self.prompts.get(self.settings.prompts.condense)
        fitted = await self._fit(
            llm,
            lambda h, _: prompt.render(**neutral_inputs(history=h, question=question)),
            history,
            [],
            CONDENSE_MAX_TOKENS,
        )
        name = llm.model_name
        attributes = llm_request_attributes("chat", model.entry.provider, name, CONDENSE_MAX_TOKENS, 0.0)
        with tracer().start_as_current_span(f"condense {name}", attributes=attributes) as span:
            completion = await llm.complete(fitted.messages, max_tokens=CONDENSE_MAX_TOKENS)
            span.set_attributes(
                llm_response_attributes(completion.model, completion.finish_reason, completion.usage)
            )
        condensed = (
            completion.text.strip().strip('"').splitlines()[0].strip() if completion.text.strip() else ""
        )
        # A small model may copy the answer, echo the transcript, return nothing or drift: then the
        # deterministic rewrite (previous question + names of the previous answer + the follow-up).
        if usable_rewrite(condensed, question, history):
            self.metrics.condense.labels(outcome="model").inc()
            return condensed
        self.metrics.condense.labels(outcome="fallback").inc()
        log.info("condense rewrite %r unusable; searching with the deterministic rewrite", condensed[:200])
        return deterministic_rewrite(question, history)

    def _result(
        self,
        prepared: _Prepared,
        answer: str,
        model: str,
        usage: Usage,
        finish: str | None = None,
        response_id: str | None = None,
    ) -> ChatResult:
        routed = prepared.plan.routed
        if routed is not None and routed.final:  # a rule's or a curated answer, as written
            answer, citations, abstained = routed.answer or "", routed.citations, False
        else:
            answer, citations, abstained = self._drafted(prepared, answer)
        checked = grounding(answer, citations)
        if checked.score is not None:
            self.metrics.grounding.observe(checked.score)
            self.metrics.unsupported_facts.inc(len(checked.unsupported))
        if finish == "length":
            self.metrics.capped_answers.inc()
        usage_dict = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        self.metrics.tokens.labels(kind="prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(kind="completion").inc(usage.completion_tokens)
        if routed is not None:
            prepared.retrieval["routing"] = routed.decisions
        return ChatResult(
            conversation_id=prepared.conversation_id,
            response_id=response_id or new_response_id(),
            answer=answer,
            citations=citations,
            prompt=prepared.prompt_ref,
            model=model,
            usage=usage_dict,
            finish_reason="length" if finish == "length" else "stop",
            abstained=abstained,
            grounding=checked.to_dict(),
            collection=prepared.collection,
            collection_version=str(prepared.retrieval.get("collection_version", "v1")),
            experiment=prepared.plan.enrollment.experiment if prepared.plan.enrollment else None,
            arm=prepared.plan.enrollment.arm if prepared.plan.enrollment else None,
            answered_by=routed.answered_by if routed is not None and routed.final else "llm",
            route=routed.route if routed is not None else None,
            retrieval=prepared.retrieval,
            query=prepared.search_query,
            contexts=prepared.sources,
            latency_ms=(time.perf_counter() - prepared.started) * 1000,
        )

    def _drafted(self, prepared: _Prepared, answer: str) -> tuple[str, list[Citation], bool]:
        """The model's draft as the answer: prompt echoes filtered, citations chosen, and abstained when
        the sources hold no answer (then "The documents don't say." and no citations)."""
        sources = prepared.sources
        answer, shown = filtered(trim_transcript(answer), [s.n for s in sources])
        answer = tidy(answer)
        abstained = not answer or not sources or says_dont_know(answer)
        if shown.numbers:
            citations = shown.cited(sources)
        else:  # no markers: the sources holding its words, numbered 1..k in that order
            citations = [renumbered(c, i) for i, c in enumerate(attribute(answer, sources), start=1)]
        if prepared.unanswerable is not None:  # judged before generation: nothing was drafted
            abstained = True
            prepared.retrieval["answerability"] = prepared.unanswerable
        elif answer and sources:
            # The evidence is recorded for every answer (the fitting data of `ragserver eval answerability`).
            found = evidence(prepared.search_query, answer, sources, citations, before=prepared.before)
            judged: dict[str, Any] = found.to_dict()
            fitted = self._answerability()
            if fitted is not None and not is_refusal(answer):  # a refusal stays a refusal
                flagged, p = fitted.abstain(found)
                abstained = abstained or flagged
                judged["p_unanswerable"] = round(p, 4)
            judged["abstained"] = abstained
            judged["stage"] = "after"
            prepared.retrieval["answerability"] = judged
        if abstained:
            # Nothing the sources hold: say so, cite nothing (a "maybe" source would lend it authority).
            answer, citations = ABSTAINED, []
        return answer, citations, abstained

    def _log_answer(self, result: ChatResult) -> None:
        log.info(
            "answered conversation %s from %s with %s: %d+%d tokens in %.0f ms, history saved: %s",
            result.conversation_id,
            result.collection,
            result.model,
            result.usage["prompt_tokens"],
            result.usage["completion_tokens"],
            result.latency_ms,
            result.history_saved,
        )

    # -- history ---------------------------------------------------------------------------------

    async def _history_call(self, op: str, call: Awaitable[T]) -> T:
        """A history store call bounded by history.timeout_s; a failure is `Unavailable` (503)."""
        try:
            return await asyncio.wait_for(call, self.settings.history.timeout_s)
        except (HistoryStoreError, TimeoutError) as exc:
            self.metrics.history_failures.labels(op=op).inc()
            log.warning("history store %s failed: %r", op, exc)
            raise Unavailable(
                "the conversation history store is unavailable; retry later",
                code="history_unavailable",
                retry_after_s=HISTORY_RETRY_AFTER_S,
            ) from exc

    async def _read_history(self, conversation_id: str) -> list[Turn] | None:
        return await self._history_call("get", self.history.get(conversation_id))

    async def _remember(self, prepared: _Prepared, result: ChatResult) -> bool:
        """Store the question and answer with what produced it; False (logged, never raised) when the
        store fails, so a generated answer still reaches its client."""
        if not prepared.query.remember or prepared.query.history is not None:
            return False
        now = time.time()
        # Every answer records what produced it (prompt, model, retrieval settings, cited chunks).
        record = {
            "response_id": result.response_id,
            "prompt": result.prompt,
            "model": result.model,
            "collection": result.collection,
            "retrieval": result.retrieval,
            "citations": [c.chunk_id for c in result.citations],
        }
        turns = [
            Turn(role="user", content=prepared.query.message, created_at=now),
            Turn(role="assistant", content=result.answer, created_at=now, metadata=record),
        ]
        try:
            await self._history_call("append", self.history.append(prepared.history_key, turns))
        except Exception as exc:  # whatever broke, the answer still goes out
            log.warning(
                "answer %s returned without being saved to conversation %s: %r",
                result.response_id,
                prepared.conversation_id,
                exc,
            )
            return False
        return True
