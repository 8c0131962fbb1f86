"""Answer profiles: a collection's answer defaults (prompt, model, retrieval settings), stored in the
system of record, set through the admin API and `ragserver collections profile`, audited.

A request's own fields win over an experiment arm's overrides, which win over the collection's profile,
which wins over the server settings (`ChatQuery.resolve`). The settings are the profile of a collection
that has none. Every process keeps what it read for `experiments.refresh_s`, so a change reaches every
replica within that.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine

from app.auth.audit import audited
from app.auth.principal import Principal
from app.db.tables import answer_profiles as profiles_t
from app.services.errors import InvalidInput
from app.services.refreshing import Refreshing
from app.settings import RetrievalMode, Settings

if TYPE_CHECKING:
    from app.auth.audit import AuditLog
    from app.llm.registry import ModelRegistry
    from app.prompting import PromptRegistry
    from app.services.retrieval_service import RetrievalService

# The fusion settings a profile may set, by their name in `RetrievalSettings` -> in `FusionConfig`.
FUSION_FIELDS = {
    "fusion": "method",
    "rrf_k": "rrf_k",
    "dense_weight": "dense_weight",
    "bm25_weight": "bm25_weight",
    "candidates": "candidates",
}


class AnswerProfile(BaseModel):
    """How a collection answers; unset fields fall through to the server settings. Also the shape of an
    experiment arm's overrides."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description='The answer prompt, "name@version".', max_length=200)
    model: str | None = Field(None, description="A model of the registry (GET /v1/admin/models).")
    mode: RetrievalMode | None = None
    top_k: int | None = Field(None, ge=1, le=200)
    fusion: Literal["rrf", "convex"] | None = None
    rrf_k: int | None = Field(None, ge=1)
    dense_weight: float | None = Field(None, ge=0.0)
    bm25_weight: float | None = Field(None, ge=0.0)
    candidates: int | None = Field(None, ge=1, le=1000)
    # Whether the collection's routing chain runs (False: every question goes to retrieval and the LLM):
    # an experiment arm with `routing: false` measures what the chain is worth.
    routing: bool | None = None

    def values(self) -> dict[str, Any]:
        """The fields this profile sets."""
        return self.model_dump(exclude_none=True)

    def over(self, base: AnswerProfile) -> AnswerProfile:
        """`base` with this profile's fields on top."""
        return AnswerProfile(**{**base.values(), **self.values()})

    def fusion_changes(self) -> dict[str, Any]:
        """The retriever's `FusionConfig` fields this profile changes."""
        return {FUSION_FIELDS[k]: v for k, v in self.values().items() if k in FUSION_FIELDS}


def parse_profile(values: dict[str, Any], *, what: str = "profile") -> AnswerProfile:
    """An `AnswerProfile` from untrusted data: InvalidInput (400) naming the bad field."""
    try:
        return AnswerProfile.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or what
        raise InvalidInput(f"{what}: {field}: {first['msg']}", code="invalid_profile") from exc


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings (the CLI's `--set`) as profile values; `key=` unsets the key (None)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or key not in AnswerProfile.model_fields:
            fields = ", ".join(AnswerProfile.model_fields)
            raise InvalidInput(f"--set takes key=value with key one of {fields}; got {pair!r}")
        values[key] = raw.strip() or None
    return values


def effective(settings: Settings, profile: AnswerProfile, default_model: str) -> dict[str, Any]:
    """What a request with no fields of its own gets: the profile over the server settings."""
    r = settings.retrieval
    defaults = {
        "prompt": settings.prompts.answer,
        "model": default_model,
        "mode": r.mode,
        "top_k": r.top_k,
        "fusion": r.fusion,
        "rrf_k": r.rrf_k,
        "dense_weight": r.dense_weight,
        "bm25_weight": r.bm25_weight,
        "candidates": r.candidates,
        "routing": True,
    }
    return {**defaults, **profile.values()}


class ProfileStore:
    """`answer_profiles` rows, by store name (tenant-qualified collection name)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, store: str) -> AnswerProfile:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(profiles_t.c.profile_json).where(profiles_t.c.collection == store)
            ).first()
        return AnswerProfile.model_validate_json(row.profile_json) if row else AnswerProfile()

    def put(self, store: str, profile: AnswerProfile) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(sa.delete(profiles_t).where(profiles_t.c.collection == store))
            if profile.values():
                conn.execute(
                    sa.insert(profiles_t).values(
                        collection=store,
                        profile_json=profile.model_dump_json(exclude_none=True),
                        updated_at=now,
                    )
                )


class ProfileService:
    """Read and set collections' answer profiles."""

    def __init__(
        self,
        settings: Settings,
        store: ProfileStore,
        *,
        models: ModelRegistry,
        prompts: PromptRegistry,
        retrieval: RetrievalService,
        audit: AuditLog | None = None,
    ):
        self.settings = settings
        self.store = store
        self.models = models
        self.prompts = prompts
        self.retrieval = retrieval
        self.audit = audit
        self._profiles = Refreshing(store.get, lambda: settings.experiments.refresh_s)

    async def for_store(self, store: str) -> AnswerProfile:
        """The profile of store `store` as this process last read it (at most `refresh_s` old)."""
        return await self._profiles.aget(store)

    async def get(self, principal: Principal, collection: str) -> dict[str, Any]:
        """The collection's profile and what it makes of the server settings."""
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        profile = await asyncio.to_thread(self.store.get, store)
        return self._shown(collection, profile)

    async def set(
        self, principal: Principal, collection: str, values: dict[str, Any], *, replace: bool = False
    ) -> dict[str, Any]:
        """Set fields of the collection's profile (None unsets one; `replace`: the whole profile)."""
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        async with audited(self.audit, principal, "profile.set", collection=collection, object_id=collection):
            current = AnswerProfile() if replace else await asyncio.to_thread(self.store.get, store)
            merged = {**current.values(), **values}
            profile = parse_profile({k: v for k, v in merged.items() if v is not None})
            await self.check(principal, profile)
            await asyncio.to_thread(self.store.put, store, profile)
            self._profiles.forget(store)
        return self._shown(collection, profile)

    async def check(self, principal: Principal, profile: AnswerProfile, *, what: str = "profile") -> None:
        """InvalidInput / ModelNotFound unless every name in `profile` exists: its prompt and model."""
        if profile.prompt is not None:
            try:
                self.prompts.get(profile.prompt)
            except Exception as exc:
                raise InvalidInput(
                    f"{what}: prompt {profile.prompt!r}: {exc}", code="invalid_profile"
                ) from exc
        if profile.model is not None:
            await self.models.get(principal.tenant, profile.model)

    def _shown(self, collection: str, profile: AnswerProfile) -> dict[str, Any]:
        return {
            "collection": collection,
            "profile": profile.values(),
            "effective": effective(self.settings, profile, self.models.default.name),
        }
