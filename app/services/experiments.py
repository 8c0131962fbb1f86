"""A/B experiments on live traffic: create, start, pause, stop, enroll requests, report, guardrails, and
ship the winner into the collections' answer profiles (docs/EXPERIMENTS.md).

An experiment belongs to a tenant and names some of its collections. While it runs, a chat request over
one of them that names no prompt, model or mode of its own is enrolled: its unit (the conversation, or the
API key) hashes into an arm (`app/experiments/assignment.py`), whose overrides go over the collection's
profile. Status lives in the database; every process re-reads the running experiments after
`experiments.refresh_s`, so starting, pausing or stopping reaches every replica within that, no restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.auth.audit import AuditEntry, audited
from app.auth.principal import Principal
from app.experiments.assignment import choose_arm
from app.experiments.report import build_report, guardrail_verdicts
from app.experiments.spec import ExperimentSpec
from app.experiments.store import Experiment, ExperimentStore
from app.services.answer_profiles import AnswerProfile, ProfileService
from app.services.limits import OverLimit
from app.services.metrics import Metrics
from app.services.refreshing import Refreshing
from app.settings import Settings
from app.traces.store import TraceStore
from ingest.errors import DomainError

if TYPE_CHECKING:
    from app.auth.audit import AuditLog
    from app.services.retrieval_service import RetrievalService

log = logging.getLogger(__name__)

# Experiments one tenant may keep (every process reads the running ones every refresh_s).
MAX_EXPERIMENTS = 200

# Which status each action may start from, and where it leads.
TRANSITIONS = {
    "start": ({"draft", "paused"}, "running"),
    "pause": ({"running"}, "paused"),
    "stop": ({"draft", "running", "paused"}, "stopped"),
}


class ExperimentNotFound(DomainError, LookupError):
    kind, code = "not_found", "experiment_not_found"


class ExperimentConflict(DomainError):
    kind, code = "conflict", "experiment_conflict"


@dataclass(frozen=True)
class Enrollment:
    """A request's place in an experiment: the arm its unit hashed into and what that arm changes."""

    experiment: str
    arm: str
    unit: str
    overrides: AnswerProfile

    @property
    def header(self) -> str:
        """The `X-RAGServer-Arm` header's value."""
        return f"{self.experiment}/{self.arm}"


class ExperimentService:
    def __init__(
        self,
        settings: Settings,
        store: ExperimentStore,
        *,
        profiles: ProfileService,
        traces: TraceStore,
        retrieval: RetrievalService,
        metrics: Metrics,
        audit: AuditLog | None = None,
    ):
        self.settings = settings
        self.store = store
        self.profiles = profiles
        self.traces = traces
        self.retrieval = retrieval
        self.metrics = metrics
        self.audit = audit
        self._running = Refreshing(self._read_running, lambda: settings.experiments.refresh_s)
        self._guard: asyncio.Task[None] | None = None

    # -- admin ---------------------------------------------------------------------------------

    async def create(
        self, principal: Principal, spec: ExperimentSpec, *, replace: bool = False
    ) -> Experiment:
        """A new draft experiment (`replace`: over a draft or stopped one of that name)."""
        async with audited(self.audit, principal, "experiment.create", object_id=spec.name):
            await self._check(principal, spec)
            if replace:
                old = await asyncio.to_thread(self.store.get, principal.tenant, spec.name)
                if old is not None and old.status in ("running", "paused"):
                    raise ExperimentConflict(f"experiment {spec.name!r} is {old.status}: stop it first")
            kept = await asyncio.to_thread(self.store.list, principal.tenant)
            if len(kept) >= MAX_EXPERIMENTS and not (replace and any(e.name == spec.name for e in kept)):
                raise OverLimit(
                    f"a tenant keeps at most {MAX_EXPERIMENTS} experiments "
                    "(--replace reuses a stopped one's name)"
                )
            experiment = Experiment(tenant=principal.tenant, spec=spec)
            experiment.log.append({"at": time.time(), "event": "created", "by": principal.actor})
            if not await asyncio.to_thread(self.store.create, experiment, replace=replace):
                raise ExperimentConflict(f"experiment {spec.name!r} already exists")
        return experiment

    async def get(self, principal: Principal, name: str) -> Experiment:
        experiment = await asyncio.to_thread(self.store.get, principal.tenant, name)
        if experiment is None or not all(principal.may_use(c) for c in experiment.spec.collections):
            raise ExperimentNotFound(f"experiment {name!r} not found")
        return experiment

    async def list_all(self, principal: Principal) -> list[Experiment]:
        found = await asyncio.to_thread(self.store.list, principal.tenant)
        return [e for e in found if all(principal.may_use(c) for c in e.spec.collections)]

    async def change_status(self, principal: Principal, name: str, action: str) -> Experiment:
        """start | pause | stop. Starting checks that no other running experiment holds its collections."""
        allowed, target = TRANSITIONS[action]
        async with audited(self.audit, principal, f"experiment.{action}", object_id=name):
            experiment = await self.get(principal, name)
            if experiment.status not in allowed:
                raise ExperimentConflict(f"experiment {name!r} is {experiment.status}; cannot {action} it")
            if target == "running":
                await self._check(
                    principal, experiment.spec
                )  # its collections, prompts and models still exist
                busy = [
                    other.name
                    for other in await asyncio.to_thread(self.store.list, principal.tenant, status="running")
                    if other.name != name and set(other.spec.collections) & set(experiment.spec.collections)
                ]
                if busy:
                    raise ExperimentConflict(
                        f"experiment {busy[0]!r} is running on the same collections: stop or pause it first"
                    )
                experiment.started_at = experiment.started_at or time.time()
            experiment.status = target
            experiment.log.append({"at": time.time(), "event": target, "by": principal.actor})
            await asyncio.to_thread(self.store.save, experiment)
        self._running.forget()  # this process sees it at once; the others within refresh_s
        return experiment

    async def report(self, principal: Principal, name: str) -> dict[str, Any]:
        """The report (`app/experiments/report.py`), after a guardrail check of this experiment."""
        experiment = await self.get(principal, name)
        if experiment.status == "running":
            await self._enforce(experiment)
        traces = await self.traces.search(tenant=principal.tenant, experiment=name, limit=10_000_000)
        return await asyncio.to_thread(build_report, experiment, traces)

    async def conclude(self, principal: Principal, name: str, arm: str) -> dict[str, Any]:
        """Ship `arm`: its overrides go into each collection's answer profile (audited there too), and the
        experiment stops."""
        async with audited(self.audit, principal, "experiment.conclude", object_id=name):
            experiment = await self.get(principal, name)
            winner = experiment.spec.arm(arm)
            profiles = {}
            for collection in experiment.spec.collections:
                values = winner.overrides.values()
                profiles[collection] = (
                    await self.profiles.set(principal, collection, values) if values else None
                )
            if experiment.status != "stopped":
                experiment.status = "stopped"
            experiment.log.append(
                {"at": time.time(), "event": "concluded", "arm": arm, "by": principal.actor}
            )
            await asyncio.to_thread(self.store.save, experiment)
        self._running.forget()
        return {"experiment": experiment.to_dict(), "arm": arm, "profiles": profiles}

    async def _check(self, principal: Principal, spec: ExperimentSpec) -> None:
        for collection in spec.collections:  # CollectionNotFound for one the key may not touch
            await self.retrieval.resolve_collection(collection, principal=principal)
        for arm in spec.arms:
            await self.profiles.check(principal, arm.overrides, what=f"arm {arm.name}")

    # -- serving -------------------------------------------------------------------------------

    async def enroll(
        self, principal: Principal, collection: str, *, conversation: str, count: bool = True
    ) -> Enrollment | None:
        """The arm of a request over `collection` (as the caller names it) whose conversation unit is
        `conversation`; None when no running experiment of the tenant holds the collection. `count`:
        count the assignment (not for a request that is only asked whether it would have been)."""
        for experiment in (await self._running.aget(None)).get(principal.tenant, ()):
            spec = experiment.spec
            if collection not in spec.collections:
                continue
            unit = conversation if spec.unit == "conversation" else (principal.key_id or principal.actor)
            arm = spec.arms[choose_arm(spec.hash_seed, unit, [a.weight for a in spec.arms])]
            if arm.name in experiment.stopped_arms:
                arm = spec.control  # a stopped arm's traffic goes to control
            if count:
                self.metrics.experiment_assignments.labels(experiment=spec.name, arm=arm.name).inc()
            return Enrollment(spec.name, arm.name, unit, arm.overrides)
        return None

    def _read_running(self, _: None) -> dict[str, list[Experiment]]:
        """Every tenant's running experiments (one query for the whole server)."""
        by_tenant: dict[str, list[Experiment]] = {}
        for e in self.store.list(status="running"):
            by_tenant.setdefault(e.tenant, []).append(e)
        return by_tenant

    # -- guardrails ----------------------------------------------------------------------------

    async def check_guardrails(self) -> list[tuple[str, str, str]]:
        """Stop every arm of a running experiment that a guardrail condemns; (tenant, experiment, arm)."""
        stopped = []
        for experiment in await asyncio.to_thread(self.store.list, status="running"):
            for arm in await self._enforce(experiment):
                stopped.append((experiment.tenant, experiment.name, arm))
        return stopped

    async def _enforce(self, experiment: Experiment) -> list[str]:
        spec = experiment.spec
        if not spec.guardrails:
            return []
        traces = await self.traces.search(tenant=experiment.tenant, experiment=spec.name, limit=10_000_000)
        verdicts = await asyncio.to_thread(
            guardrail_verdicts, spec, traces, min_units=self.settings.experiments.guardrail_min_units
        )
        fresh = {arm: why for arm, why in verdicts.items() if arm not in experiment.stopped_arms}
        if not fresh:
            return []
        current = await asyncio.to_thread(self.store.get, experiment.tenant, spec.name)
        if current is None:
            return []
        now = time.time()
        for arm, why in fresh.items():
            current.stopped_arms.setdefault(arm, {"at": now, "reason": why})
            current.log.append({"at": now, "event": "arm_stopped", "arm": arm, "reason": why})
            self.metrics.experiment_arms_stopped.labels(experiment=spec.name, arm=arm).inc()
            log.warning("experiment %s: arm %s stopped: %s", spec.name, arm, why)
            if self.audit is not None:
                await self.audit.record(
                    AuditEntry(
                        tenant=experiment.tenant,
                        actor="guardrail",
                        action="experiment.arm_stop",
                        outcome="ok",
                        object_id=f"{spec.name}/{arm}",
                        detail=why[:500],
                    )
                )
        await asyncio.to_thread(self.store.save, current)
        experiment.stopped_arms = current.stopped_arms
        self._running.forget()
        return list(fresh)

    async def start(self) -> None:
        """Check guardrails every `experiments.guardrail_interval_s` in the background."""
        if self.settings.experiments.guardrail_interval_s > 0:
            self._guard = asyncio.create_task(self._guard_periodically(), name="experiment-guardrails")

    async def stop(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            await asyncio.gather(self._guard, return_exceptions=True)
            self._guard = None

    async def _guard_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.experiments.guardrail_interval_s)
            try:
                await self.check_guardrails()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("experiment guardrail check failed; trying again later")
