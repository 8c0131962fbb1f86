"""The model registry: every LLM a request, a collection's answer profile or an experiment arm may name.

Three sources, one list per tenant:
- the `llm` section, the **default** model (its name: `llm.name`, else `local-<local_model>` or `llm.model`),
  with the settings' fallback endpoint as a model of its own;
- the **packaged** local models (`local-qwen2.5-0.5b`, `local-smollm2`: both installed by `make install`,
  loaded on first use) and the models in `models.extra`: every tenant's;
- models a tenant's admin **registered** (`POST /v1/admin/models`, `ragserver models add`): that tenant's
  only, stored in the system of record (`llm_models`), read again after `experiments.refresh_s`.

Each model has its provider, endpoint, context window, prices per 1,000 prompt/completion tokens (an
answer's estimated cost, recorded on its trace) and license. A model's `fallback` names another model
that answers when it fails. API keys never enter the database: a model names the environment variable
that holds its key (`api_key_env`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.auth.audit import audited
from app.db.tables import llm_models as models_t
from app.llm.base import LLM, Usage
from app.llm.local_models import LOCAL_MODELS
from app.services.refreshing import Refreshing
from app.settings import LLMSettings, ModelEntry, Settings
from ingest.errors import DomainError

if TYPE_CHECKING:
    from app.auth.audit import AuditLog
    from app.auth.principal import Principal

log = logging.getLogger(__name__)

# As the models' cards state them: SmolLM2's GGUF declares apache-2.0 (general.license); the Qwen wheels
# declare none, and Qwen2.5-Coder-0.5B-Instruct's model card states Apache-2.0.
PACKAGED_LICENSES = {"smollm2": "apache-2.0", "qwen2.5-0.5b": "apache-2.0"}
# The local runtime's cap (app/llm/local_provider.py), below both models' own windows.
LOCAL_CONTEXT_WINDOW = 8192
# How many models one tenant may register.
MAX_REGISTERED = 100

Source = Literal["settings", "packaged", "registered"]


class ModelNotFound(DomainError, LookupError):
    kind, code = "not_found", "model_not_found"


class ModelConflict(DomainError):
    kind, code = "conflict", "model_exists"


class RegistrationDisabled(DomainError):
    kind, code = "forbidden", "model_registration_disabled"


@dataclass(frozen=True)
class RegisteredModel:
    """A model of the registry, with where it came from."""

    entry: ModelEntry
    source: Source
    default: bool = False

    @property
    def name(self) -> str:
        return self.entry.name

    def cost(self, usage: Usage) -> float:
        """The estimated price of `usage` (0 for a local model)."""
        e = self.entry
        return (usage.prompt_tokens * e.price_in + usage.completion_tokens * e.price_out) / 1000.0

    def to_dict(self) -> dict[str, Any]:
        """What the admin API lists: never a key, only the variable that holds it."""
        return {**self.entry.model_dump(mode="json"), "default": self.default, "source": self.source}


def default_entry(llm: LLMSettings) -> ModelEntry:
    """The `llm` section as a registry entry."""
    packaged = llm.provider == "local" and not llm.local_model_dir
    model_id = llm.model
    if llm.provider == "scripted" and "model" not in llm.model_fields_set:
        model_id = "scripted-model"  # what the scripted provider calls itself unless llm.model names it
    if llm.name:
        name = llm.name
    elif llm.provider == "local":
        name = f"local-{llm.local_model}" if packaged else "local-custom"
    else:
        name = model_id
    return ModelEntry(
        name=name,
        provider=llm.provider,
        base_url=llm.base_url if llm.provider == "openai" else None,
        model=llm.local_model if llm.provider == "local" else model_id,
        context_window=min(llm.context_window, LOCAL_CONTEXT_WINDOW)
        if llm.provider == "local"
        else llm.context_window,
        price_in=llm.price_in,
        price_out=llm.price_out,
        license=llm.license or (PACKAGED_LICENSES.get(llm.local_model, "unknown") if packaged else "unknown"),
        fallback="fallback" if llm.fallback_base_url else None,
    )


def builtin_models(settings: Settings) -> dict[str, RegisteredModel]:
    """Every tenant's models, the default first."""
    llm = settings.llm
    default = default_entry(llm)
    found = {default.name: RegisteredModel(default, "settings", default=True)}
    if llm.fallback_base_url:
        fallback = ModelEntry(
            name="fallback",
            provider="openai",
            base_url=llm.fallback_base_url,
            model=llm.fallback_model or llm.model,
            context_window=llm.context_window,
        )
        found.setdefault(fallback.name, RegisteredModel(fallback, "settings"))
    for key in LOCAL_MODELS:
        entry = ModelEntry(
            name=f"local-{key}",
            provider="local",
            model=key,
            context_window=LOCAL_CONTEXT_WINDOW,
            license=PACKAGED_LICENSES.get(key, "unknown"),
        )
        found.setdefault(entry.name, RegisteredModel(entry, "packaged"))
    for entry in settings.models.extra:
        if entry.name in found:
            raise ValueError(f"models.extra: {entry.name!r} is already the name of a built-in model")
        found[entry.name] = RegisteredModel(entry, "settings")
    return found


class ModelStore:
    """The registered models (`llm_models`), by tenant."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def list(self, tenant: str) -> list[ModelEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(models_t.c.spec_json).where(models_t.c.tenant == tenant).order_by(models_t.c.name)
            ).all()
        return [ModelEntry.model_validate_json(r.spec_json) for r in rows]

    def put(self, tenant: str, entry: ModelEntry, *, replace: bool) -> bool:
        """Store `entry`; False when the name is taken and `replace` is not set."""
        now = time.time()
        key = sa.and_(models_t.c.tenant == tenant, models_t.c.name == entry.name)
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(models_t.c.name).where(key)).first() is not None
            if exists and not replace:
                return False
            if (
                not exists
                and conn.execute(
                    sa.select(sa.func.count()).select_from(models_t).where(models_t.c.tenant == tenant)
                ).scalar_one()
                >= MAX_REGISTERED
            ):
                raise ModelConflict(f"a tenant may register at most {MAX_REGISTERED} models")
            spec = entry.model_dump_json()
            if exists:
                conn.execute(sa.update(models_t).where(key).values(spec_json=spec, updated_at=now))
            else:
                conn.execute(
                    sa.insert(models_t).values(
                        tenant=tenant, name=entry.name, spec_json=spec, created_at=now, updated_at=now
                    )
                )
        return True

    def delete(self, tenant: str, name: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.delete(models_t).where(models_t.c.tenant == tenant, models_t.c.name == name)
            )
        return bool(done.rowcount)


class ModelRegistry:
    """The models a tenant may name, and their LLM clients (built on first use, then kept)."""

    def __init__(
        self,
        settings: Settings,
        store: Callable[[], ModelStore],
        default_llm: Callable[[], LLM],
        *,
        audit: Callable[[], AuditLog] | None = None,
    ):
        self.settings = settings
        self._audit = audit
        self.builtin = builtin_models(settings)
        self.default = next(m for m in self.builtin.values() if m.default)
        self._store = store
        self._default_llm = default_llm
        self._llms: dict[str, LLM] = {}
        self._lock = threading.Lock()
        self._registered = Refreshing(self._read_registered, lambda: settings.experiments.refresh_s)

    # -- reading -------------------------------------------------------------------------------

    async def list(self, tenant: str) -> list[RegisteredModel]:
        """The tenant's models: the built-in ones, then its registered ones by name."""
        return [*self.builtin.values(), *(await self._tenant_models(tenant, fresh=True)).values()]

    async def get(self, tenant: str, name: str | None) -> RegisteredModel:
        """The model `name` of `tenant` (None: the default); ModelNotFound for one it does not have."""
        if name is None:
            return self.default
        found = self.builtin.get(name)
        if found is None:
            found = (await self._tenant_models(tenant)).get(name)
        if found is None:
            raise ModelNotFound(f"model {name!r} not found (GET /v1/admin/models lists them)")
        return found

    async def _tenant_models(self, tenant: str, *, fresh: bool = False) -> dict[str, RegisteredModel]:
        if fresh:
            self._registered.forget(tenant)
        return await self._registered.aget(tenant)

    def _read_registered(self, tenant: str) -> dict[str, RegisteredModel]:
        return {e.name: RegisteredModel(e, "registered") for e in self._store().list(tenant)}

    # -- clients -------------------------------------------------------------------------------

    async def llm(self, tenant: str, model: RegisteredModel, *, _seen: frozenset[str] = frozenset()) -> LLM:
        """The client of `model` (its fallback model behind it, when it names one). Clients are shared by
        every tenant and name that point at the same endpoint: a packaged local model is loaded once per
        process however many tenants register it (the default model's own when it is the same one)."""
        if model.default:
            return self._default_llm()
        entry, default = model.entry, self.default.entry
        packaged_default = not self.settings.llm.local_model_dir  # a custom GGUF is no packaged model
        if (
            entry.provider == "local" == default.provider
            and entry.model == default.model
            and packaged_default
        ):
            client = self._default_llm()
        else:
            key = self._client_key(entry)
            with self._lock:
                found = self._llms.get(key)
            if found is None:
                built = await asyncio.to_thread(self._build, entry)
                with self._lock:
                    found = self._llms.setdefault(key, built)
            client = found
        if not entry.fallback:
            return client
        from app.llm.fallback import FallbackLLM

        if entry.fallback in _seen | {model.name}:
            raise ModelConflict(f"model {model.name!r}: its fallbacks lead back to {entry.fallback!r}")
        fallback = await self.get(tenant, entry.fallback)
        return FallbackLLM(client, await self.llm(tenant, fallback, _seen=_seen | {model.name}))

    @staticmethod
    def _client_key(entry: ModelEntry) -> str:
        """What a client depends on: the endpoint and model (a local one: only which packaged model)."""
        if entry.provider == "local":
            return f"local\x00{entry.model}"
        parts = (entry.provider, entry.base_url or "", entry.model or entry.name, entry.api_key_env or "")
        return "\x00".join((*parts, str(entry.context_window)))

    def _build(self, entry: ModelEntry) -> LLM:
        from app.llm.factory import build_llm

        base = self.settings.llm
        llm_settings = LLMSettings(
            provider=entry.provider,
            base_url=entry.base_url,
            api_key=os.environ.get(entry.api_key_env, "not-needed") if entry.api_key_env else "not-needed",
            model=entry.model or entry.name,
            local_model=entry.model if entry.provider == "local" else base.local_model,  # type: ignore[arg-type]
            local_runtime=base.local_runtime,
            max_tokens=base.max_tokens,
            temperature=base.temperature,
            timeout_s=base.timeout_s,
            max_retries=base.max_retries,
            deadline_s=base.deadline_s,
            context_window=entry.context_window,
        )
        llm = build_llm(llm_settings, self.settings.models_dir)
        load = getattr(llm, "load", None)
        if load is not None:  # a local model: read it now, not inside the first request's deadline
            load()
        return llm

    async def aclose(self) -> None:
        """Close the clients this registry built (the default belongs to the container)."""
        with self._lock:
            built, self._llms = list(self._llms.values()), {}
        for llm in built:
            try:
                await llm.aclose()
            except Exception:  # one failing close must not keep the others open
                log.exception("closing model client %s failed", getattr(llm, "model_name", "?"))

    # -- registering ---------------------------------------------------------------------------

    def _audited(self, principal: Principal, action: str, name: str) -> Any:
        return audited(self._audit() if self._audit else None, principal, action, object_id=name)

    async def add(self, principal: Principal, entry: ModelEntry, *, replace: bool = False) -> RegisteredModel:
        """Register `entry` for the caller's tenant (audited); ModelConflict for a taken name (a built-in
        one, or its own unless `replace`)."""
        async with self._audited(principal, "model.add", entry.name):
            return await self._add(principal.tenant, entry, replace=replace)

    async def _add(self, tenant: str, entry: ModelEntry, *, replace: bool) -> RegisteredModel:
        if not self.settings.models.allow_registration:
            raise RegistrationDisabled(
                "this server does not let tenants register models (models.allow_registration)"
            )
        if entry.name in self.builtin:
            raise ModelConflict(f"{entry.name!r} is a built-in model's name")
        if entry.fallback is not None:
            await self.get(tenant, entry.fallback)  # ModelNotFound for an unknown fallback
        if entry.provider == "local" and entry.model not in LOCAL_MODELS:
            raise ModelConflict(f"a local model is one of {', '.join(sorted(LOCAL_MODELS))}")
        if not await asyncio.to_thread(self._store().put, tenant, entry, replace=replace):
            raise ModelConflict(f"model {entry.name!r} already exists (--replace to change it)")
        self._registered.forget(tenant)
        return RegisteredModel(entry, "registered")

    async def remove(self, principal: Principal, name: str) -> None:
        """Forget a registered model of the caller's tenant (audited)."""
        async with self._audited(principal, "model.remove", name):
            if name in self.builtin:
                raise ModelConflict(f"{name!r} is a built-in model (set in the server's settings)")
            if not await asyncio.to_thread(self._store().delete, principal.tenant, name):
                raise ModelNotFound(f"model {name!r} not found")
            self._registered.forget(principal.tenant)
