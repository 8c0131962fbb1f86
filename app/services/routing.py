"""Holistic answering: a collection's routing chain in front of retrieval and the LLM (docs/ROUTING.md).

Stages in order: **rules** (RE2 patterns or keywords -> a canned answer, a refusal, or another collection,
answer profile or model for the rest), **curated answers** (a question close enough to an approved one gets
its stored answer and citations, with no retrieval and no LLM; one whose cited documents changed since
approval is not served and turns `stale`), then **the LLM** over retrieval, its model picked by the
chain's model policy once the retrieval top score is known. Every stage's decision goes on the trace.

Curated answers come from the feedback loop: a `reviewed` feedback with a correction becomes a candidate;
an admin approves it (`ragserver routes curated approve`), which embeds its question and records the
content hash of every document it cites.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.auth.audit import audited
from app.auth.principal import Principal
from app.routing.chain import (
    ClassifierStage,
    CuratedStage,
    LLMStage,
    ModelPolicy,
    RouteAction,
    RoutingChain,
    RuleStage,
)
from app.routing.classifier import RouteClassifier
from app.routing.store import ChainStore, CuratedAnswer, CuratedStore
from app.services.answer_profiles import AnswerProfile
from app.services.chat_types import Citation
from app.services.errors import InvalidInput
from app.services.metrics import Metrics
from app.services.refreshing import Refreshing
from app.settings import Settings
from ingest.errors import DomainError

if TYPE_CHECKING:
    from app.auth.audit import AuditLog
    from app.llm.registry import ModelRegistry
    from app.services.answer_profiles import ProfileService
    from app.services.retrieval_service import RetrievalService
    from app.traces.store import Feedback, Trace

log = logging.getLogger(__name__)

# The cosine similarity (all-MiniLM-L6-v2) above which a question gets a curated answer when the chain
# says `threshold: auto`: the smallest with precision >= 0.98 on the train split of
# evals/data/routing/paraphrases.jsonl (`python -m evals.routing_threshold`, docs/BENCHMARKS.md "Routing").
# It is high on purpose: questions about one entity that differ by one word ("When was Lincoln born?" /
# "When did Lincoln die?") score up to 0.98, so below it a curated answer would be served to a question
# it does not answer. It serves repeats and near-repeats; set a lower number in the chain only for
# curated questions that do not come in such pairs (the handbook half of the set: precision 1.0 at 0.79).
FITTED_THRESHOLD = 0.983
MAX_CURATED = 10_000


class CuratedNotFound(DomainError, LookupError):
    kind, code = "not_found", "curated_answer_not_found"


class ClassifierNotAllowed(InvalidInput):
    """The same 400 for every classifier path that is not a trained model under the model roots."""

    code = "invalid_classifier"

    def __init__(self) -> None:
        super().__init__(
            "a classifier's model must be a directory written by `ragserver routes train` under "
            "collections.model_roots (by default the models folder of the server's data dir)"
        )


@dataclass
class Routed:
    """What the chain decided before retrieval: a final answer, or what the LLM stage should use."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    answer: str | None = None  # set: the chain answered (or refused) without the LLM
    answered_by: str = "llm"  # rule | curated | refused | llm
    route: str | None = None
    citations: list[Citation] = field(default_factory=list)
    collection: str | None = None
    profile: AnswerProfile | None = None
    model: str | None = None
    policy: ModelPolicy | None = None

    @property
    def final(self) -> bool:
        return self.answer is not None


class RoutingService:
    def __init__(
        self,
        settings: Settings,
        chains: ChainStore,
        curated: CuratedStore,
        metrics: Metrics,
        *,
        embed: Callable[[list[str]], np.ndarray],
        embedder_id: Callable[[], str],
        documents: Callable[[str, list[str]], dict[str, str]],
        model_roots: list[Path],
        retrieval: RetrievalService,
        models: ModelRegistry,
        profiles: ProfileService,
        audit: AuditLog | None = None,
    ):
        self.settings = settings
        self.chains = chains
        self.curated = curated
        self.metrics = metrics
        self.embed = embed
        self.embedder_id = embedder_id  # the model id of `embed`'s embedder: classifiers must match it
        self.documents = documents  # (store, document ids) -> their content hashes now
        self.model_roots = model_roots
        self.retrieval = retrieval
        self.models = models
        self.profiles = profiles
        self.audit = audit
        ttl = lambda: settings.experiments.refresh_s  # noqa: E731
        self._chains = Refreshing(chains.get, ttl)
        self._approved = Refreshing(self._read_approved, ttl)
        self._classifiers: dict[tuple[str, float], RouteClassifier] = {}

    # -- serving -------------------------------------------------------------------------------

    async def chain_for(self, store: str) -> RoutingChain | None:
        """The chain of store `store`, as this process last read it (at most `refresh_s` old)."""
        return await self._chains.aget(store)

    async def route(self, store: str, question: str) -> Routed:
        """Run the stages before retrieval (rules, curated answers) for `question` over store `store`."""
        routed = Routed()
        chain = await self.chain_for(store)
        if chain is None:
            return routed
        for stage in chain.stages:
            started = time.perf_counter()
            if isinstance(stage, RuleStage):
                done = self._rule(stage, question, routed)
            elif isinstance(stage, CuratedStage):
                done = await self._curated(stage, store, question, routed)
            elif isinstance(stage, ClassifierStage):
                done = await self._classify(stage, question, routed)
            else:
                routed.policy = stage.model_policy
                routed.decisions.append({"stage": "llm", "id": stage.id, "outcome": "answering"})
                done = True
            kind = stage.type
            self.metrics.route_stage_seconds.labels(stage=kind).observe(time.perf_counter() - started)
            if done:
                break
        last = routed.decisions[-1] if routed.decisions else None
        if last is not None:
            self.metrics.route_decisions.labels(stage=last["stage"], route=last["id"]).inc()
        return routed

    def _rule(self, stage: RuleStage, question: str, routed: Routed) -> bool:
        if not stage.matches(question):
            return False
        return self._act(stage, {"stage": "rule", "id": stage.id}, "rule", stage.id, routed)

    @staticmethod
    def _act(action: RouteAction, decision: dict[str, Any], kind: str, route: str, routed: Routed) -> bool:
        """Apply a stage's action: True when it answered or refused (the chain ends)."""
        if action.answer is not None or action.refuse is not None:
            refused = action.refuse is not None
            routed.answer = action.refuse if refused else action.answer
            routed.answered_by = "refused" if refused else kind
            routed.route = route
            routed.decisions.append({**decision, "outcome": "refused" if refused else "answered"})
            return True
        stage = action
        steer = {"collection": stage.collection, "profile": stage.profile, "model": stage.model}
        routed.collection = stage.collection or routed.collection
        routed.profile = (
            stage.profile.over(routed.profile or AnswerProfile()) if stage.profile else routed.profile
        )
        routed.model = stage.model or routed.model
        routed.route = route
        shown = {k: (v.values() if isinstance(v, AnswerProfile) else v) for k, v in steer.items() if v}
        routed.decisions.append({**decision, "outcome": "steered", **shown})
        return False

    async def _curated(self, stage: CuratedStage, store: str, question: str, routed: Routed) -> bool:
        approved, matrix = await self._approved.aget(store)
        threshold = FITTED_THRESHOLD if stage.threshold == "auto" else float(stage.threshold)
        decision: dict[str, Any] = {"stage": "curated", "id": stage.id, "threshold": threshold}
        if matrix is None:
            routed.decisions.append({**decision, "outcome": "handed_on", "reason": "no approved answers"})
            return False
        vector = (await asyncio.to_thread(self.embed, [question]))[0]
        scores = matrix @ vector
        for index in np.argsort(-scores):
            score = float(scores[index])
            if score < threshold:
                break
            item = approved[int(index)]
            if not await self._still_fresh(item, store):
                continue
            routed.answer, routed.answered_by, routed.route = item.answer, "curated", item.id
            routed.citations = [Citation(**c) for c in item.citations]
            routed.decisions.append(
                {**decision, "outcome": "answered", "curated_id": item.id, "score": round(score, 4)}
            )
            return True
        best = round(float(scores.max()), 4)
        routed.decisions.append({**decision, "outcome": "handed_on", "best_score": best})
        return False

    async def _classify(self, stage: ClassifierStage, question: str, routed: Routed) -> bool:
        model = await asyncio.to_thread(self.classifier, stage.model)
        vector = await asyncio.to_thread(self.embed, [question])
        label, confidence, confident = model.predict(np.asarray(vector, dtype=np.float32))[0]
        if stage.min_confidence != "auto":
            confident = confidence >= float(stage.min_confidence)
        threshold = model.thresholds.get(label) if stage.min_confidence == "auto" else stage.min_confidence
        decision: dict[str, Any] = {
            "stage": "classifier",
            "id": stage.id,
            "label": label,
            "confidence": round(confidence, 4),
            "threshold": threshold,
        }
        action = stage.routes.get(label)
        if not confident or action is None:
            reason = "low confidence" if not confident else "no route for the label"
            routed.decisions.append({**decision, "outcome": "handed_on", "reason": reason})
            return False
        return self._act(action, decision, "classifier", f"{stage.id}:{label}", routed)

    def classifier(self, directory: str) -> RouteClassifier:
        """The classifier in `directory` (under collections.model_roots), loaded once per version."""
        from app.routing.classifier import MODEL_FILE
        from app.services.model_paths import check_model_dir

        check_model_dir(directory, self.model_roots, files=(MODEL_FILE,), refused=ClassifierNotAllowed)
        key = (str(Path(directory).resolve()), (Path(directory) / MODEL_FILE).stat().st_mtime)
        found = self._classifiers.get(key)
        if found is None:
            found = self._classifiers[key] = RouteClassifier.load(directory)
        return found

    async def _still_fresh(self, item: CuratedAnswer, store: str) -> bool:
        """Whether every document `item` cites is as it was at approval (a stale one is flagged)."""
        if not item.documents:
            return True
        now = await asyncio.to_thread(self.documents, store, list(item.documents))
        changed = sorted(d for d, digest in item.documents.items() if now.get(d) != digest)
        if not changed:
            return True
        item.status, item.note = "stale", f"cited documents changed since approval: {', '.join(changed)}"
        await asyncio.to_thread(self.curated.save, item)
        self._approved.forget(store)
        log.info("curated answer %s is stale (%s); not served", item.id, item.note)
        return False

    def _read_approved(self, store: str) -> tuple[list[CuratedAnswer], np.ndarray | None]:
        """The collection's approved curated answers and their questions' vectors, one row each."""
        items = [c for c in self.curated.in_collection(store, "approved") if c.embedding]
        return items, (np.asarray([c.embedding for c in items], dtype=np.float32) if items else None)

    def pick_model(
        self, policy: ModelPolicy | None, question: str, top_score: float | None
    ) -> tuple[str | None, str]:
        """The model the policy names for this question and retrieval top score, and why."""
        if policy is None:
            return None, "no model policy"
        for i, when in enumerate(policy.when):
            if when.holds(question, top_score):
                return when.model, f"when[{i}] held (top score {top_score})"
        return policy.default, "default"

    # -- admin: chains -------------------------------------------------------------------------

    async def set_chain(
        self, principal: Principal, collection: str, chain: RoutingChain | None
    ) -> dict[str, Any]:
        """Set (None: remove) the collection's chain, after checking every name it uses exists."""
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        async with audited(self.audit, principal, "routes.set", collection=collection, object_id=collection):
            if chain is not None:
                await self._check(principal, chain)
            await asyncio.to_thread(self.chains.put, store, chain)
            self._chains.forget(store)
        return self._shown(collection, chain)

    async def show(self, principal: Principal, collection: str) -> dict[str, Any]:
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        return self._shown(collection, await asyncio.to_thread(self.chains.get, store))

    async def _check(self, principal: Principal, chain: RoutingChain) -> None:
        for stage in chain.stages:
            if isinstance(stage, RuleStage):
                if stage.collection:
                    await self.retrieval.resolve_collection(stage.collection, principal=principal)
                if stage.model:
                    await self.models.get(principal.tenant, stage.model)
                if stage.profile:
                    await self.profiles.check(principal, stage.profile, what=f"rule {stage.id}")
            elif isinstance(stage, ClassifierStage):
                model = await asyncio.to_thread(self.classifier, stage.model)
                if model.embedder != self.embedder_id():
                    raise InvalidInput(
                        f"classifier {stage.id} was trained on the embedder {model.embedder!r}; this server "
                        f"embeds questions with {self.embedder_id()!r}",
                        code="invalid_classifier",
                    )
                unknown = sorted(set(stage.routes) - set(model.classes))
                if unknown:
                    raise InvalidInput(
                        f"classifier {stage.id} has no label {', '.join(unknown)} (labels: "
                        f"{', '.join(model.classes)})",
                        code="invalid_classifier",
                    )
                for action in stage.routes.values():
                    if action.collection:
                        await self.retrieval.resolve_collection(action.collection, principal=principal)
                    if action.model:
                        await self.models.get(principal.tenant, action.model)
            elif isinstance(stage, LLMStage) and stage.model_policy is not None:
                policy = stage.model_policy
                for name in [policy.default, *(w.model for w in policy.when)]:
                    if name is not None:
                        await self.models.get(principal.tenant, name)

    @staticmethod
    def _shown(collection: str, chain: RoutingChain | None) -> dict[str, Any]:
        return {
            "collection": collection,
            "chain": chain.model_dump(mode="json", exclude_none=True) if chain else None,
        }

    # -- curated answers -----------------------------------------------------------------------

    async def candidate_from_feedback(self, trace: Trace, feedback: Feedback) -> None:
        """A reviewed correction becomes (or updates) a candidate curated answer; never raises."""
        if not (feedback.reviewed and feedback.correction):
            return
        try:
            texts = {c["chunk_id"]: c.get("text", "") for c in trace.chunks}
            citations = [{**c, "text": texts.get(c.get("chunk_id"), "")} for c in trace.citations]
            item = await asyncio.to_thread(self.curated.by_source, trace.response_id) or CuratedAnswer(
                collection=trace.collection, question=trace.question, answer=""
            )
            if item.status == "approved":
                return  # an approved answer changes only through its review
            item.answer, item.citations, item.source_response_id = (
                feedback.correction,
                citations,
                trace.response_id,
            )
            item.status = "candidate"
            await asyncio.to_thread(self.curated.save, item)
        except Exception:  # the feedback is stored already: a candidate lost is logged, not an error
            log.exception("curated candidate from response %s failed", trace.response_id)

    async def list_curated(
        self, principal: Principal, collection: str, status: str | None
    ) -> list[CuratedAnswer]:
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        return await asyncio.to_thread(self.curated.in_collection, store, status)

    async def add_curated(
        self, principal: Principal, collection: str, question: Any, answer: Any
    ) -> CuratedAnswer:
        """A curated answer written by an admin (a candidate until approved)."""
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        for name, text in (("question", question), ("answer", answer)):
            if not isinstance(text, str) or not text.strip() or len(text) > 8000:
                raise InvalidInput(
                    f"{name}: a non-empty text of at most 8000 characters", code="invalid_curated"
                )
        if len(await asyncio.to_thread(self.curated.in_collection, store, None)) >= MAX_CURATED:
            raise InvalidInput(
                f"a collection holds at most {MAX_CURATED} curated answers", code="invalid_curated"
            )
        item = CuratedAnswer(collection=store, question=question.strip(), answer=answer.strip())
        async with audited(self.audit, principal, "curated.add", collection=collection, object_id=item.id):
            await asyncio.to_thread(self.curated.save, item)
        return item

    async def review(self, principal: Principal, collection: str, item_id: str, action: str) -> CuratedAnswer:
        """approve (embed its question, record its documents' hashes: served from now on) or reject."""
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        async with audited(
            self.audit, principal, f"curated.{action}", collection=collection, object_id=item_id
        ):
            item = await asyncio.to_thread(self.curated.get, item_id)
            if item is None or item.collection != store:
                raise CuratedNotFound(f"curated answer {item_id!r} not found")
            if action == "approve":
                item.embedding = [float(x) for x in (await asyncio.to_thread(self.embed, [item.question]))[0]]
                ids = sorted({c["document_id"] for c in item.citations if c.get("document_id")})
                item.documents = await asyncio.to_thread(self.documents, store, ids) if ids else {}
                item.status, item.note, item.approved_by = "approved", None, principal.actor
            elif action == "reject":
                item.status = "rejected"
            else:
                raise InvalidInput("the action is approve or reject", code="invalid_action")
            await asyncio.to_thread(self.curated.save, item)
        self._approved.forget(store)
        return item
