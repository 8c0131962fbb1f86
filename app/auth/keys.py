"""API keys and tenants in the relational system of record (SQLAlchemy Core, synchronous: callers on an
event loop use `asyncio.to_thread`).

A key is `rsk_` + 43 url-safe characters (256 random bits), shown once when made; the database keeps only
its SHA-256 (a key that random needs no slow hash: nothing can be guessed from the digest) and its first
12 characters, so lists and logs can tell keys apart without holding one.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

from app.auth.principal import Principal, Role, check_role
from app.db.tables import api_keys, instance_secrets, tenants
from ingest.vector_index import validate_collection_name, validate_tenant_name

KEY_PREFIX = "rsk_"
SHOWN_PREFIX_CHARS = 12


def hash_key(key: str) -> str:
    """What the database stores for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    """A key's record: everything but the key."""

    key_id: str
    tenant: str
    name: str
    role: Role
    prefix: str
    collections: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def is_active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def principal(self) -> Principal:
        return Principal(
            tenant=self.tenant,
            role=self.role,
            key_id=self.key_id,
            key_name=self.name,
            collections=frozenset(self.collections) if self.collections is not None else None,
            rpm=self.rpm,
            tpm=self.tpm,
            expires_at=self.expires_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """The public view (lists, the admin API): never the key or its hash."""
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "name": self.name,
            "role": self.role,
            "prefix": self.prefix,
            "collections": list(self.collections) if self.collections is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "active": self.is_active(),
        }

    @classmethod
    def from_row(cls, row: Row[Any]) -> ApiKey:
        m = row._mapping
        collections = json.loads(m["collections_json"]) if m["collections_json"] is not None else None
        return cls(
            key_id=m["key_id"],
            tenant=m["tenant"],
            name=m["name"],
            role=check_role(m["role"]),
            prefix=m["prefix"],
            collections=tuple(collections) if collections is not None else None,
            rpm=m["rpm"],
            tpm=m["tpm"],
            created_at=m["created_at"],
            expires_at=m["expires_at"],
            revoked_at=m["revoked_at"],
        )


class KeyStore:
    """Tenants and their keys on an already migrated engine."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def create(
        self,
        *,
        tenant: str,
        name: str,
        role: str,
        collections: Iterable[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_in_s: float | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for `tenant` (created on first use): its record and the key, which is never
        retrievable again."""
        validate_tenant_name(tenant)
        check_role(role)
        if not name.strip() or len(name) > 200:
            raise ValueError("a key name must be 1-200 characters")
        names = None
        if collections is not None:
            names = sorted({validate_collection_name(c) for c in collections})
            if not names:
                raise ValueError("a key's collection list, when given, names at least one collection")
        for label, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be at least 1")
        if expires_in_s is not None and expires_in_s <= 0:
            raise ValueError("an expiry must be in the future")
        key = new_key()
        now = time.time()
        row = {
            "key_id": "key_" + secrets.token_hex(8),
            "tenant": tenant,
            "name": name.strip(),
            "role": role,
            "key_hash": hash_key(key),
            "prefix": key[:SHOWN_PREFIX_CHARS],
            "collections_json": json.dumps(names) if names is not None else None,
            "rpm": rpm,
            "tpm": tpm,
            "created_at": now,
            "expires_at": now + expires_in_s if expires_in_s is not None else None,
            "revoked_at": None,
        }
        with self.engine.begin() as conn:
            if conn.execute(sa.select(tenants.c.name).where(tenants.c.name == tenant)).first() is None:
                conn.execute(sa.insert(tenants), {"name": tenant, "created_at": now})
            conn.execute(sa.insert(api_keys), row)
            created = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == row["key_id"])).one()
        return ApiKey.from_row(created), key

    def lookup(self, key: str) -> ApiKey | None:
        """The record of `key` (active or not), or None for a key nobody made."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == hash_key(key))).first()
        return ApiKey.from_row(row) if row is not None else None

    def get(self, key_id: str, *, tenant: str | None = None) -> ApiKey | None:
        """A key by id; with `tenant`, only that tenant's."""
        query = sa.select(api_keys).where(api_keys.c.key_id == key_id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return ApiKey.from_row(row) if row is not None else None

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.tenant, api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [ApiKey.from_row(r) for r in conn.execute(query)]

    def revoke(self, key_id: str, *, tenant: str | None = None) -> ApiKey | None:
        """Revoke a key (again: no change); None when there is no such key (of `tenant`)."""
        condition = api_keys.c.key_id == key_id
        if tenant is not None:
            condition = condition & (api_keys.c.tenant == tenant)
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(api_keys)
                .where(condition & api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = conn.execute(sa.select(api_keys).where(condition)).first()
        return ApiKey.from_row(row) if row is not None else None

    def tenants(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r.name for r in conn.execute(sa.select(tenants.c.name).order_by(tenants.c.name))]

    def secret(self, name: str) -> bytes:
        """An instance secret (made by the migrations), shared by every process on this database."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(instance_secrets.c.value).where(instance_secrets.c.name == name)
            ).scalar_one()
        return bytes.fromhex(value)
