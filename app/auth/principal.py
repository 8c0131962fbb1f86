"""The caller as every service sees it: a tenant, a role, and the collections it may touch.

A `Principal` is the only way into a tenant's data: services turn the collection a client names into a
store name with `principal.collection(name)` and a conversation id into its storage key with
`principal.conversation_key(id)`, so a client-sent name or id can never reach another tenant's objects.
A collection outside the key's list is reported exactly like one that does not exist (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ingest.vector_index import (
    DEFAULT_TENANT,
    CollectionNotFound,
    InvalidCollectionName,
    split_store_name,
    store_name,
    validate_collection_name,
)

Role = Literal["reader", "writer", "admin"]
# Lowest first: each role may do what the ones before it may.
ROLES: tuple[Role, ...] = get_args(Role)


def check_role(role: str) -> Role:
    """`role`, or ValueError when it is not one of ROLES."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role  # type: ignore[return-value]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. `key_id` is None without a key (auth mode `none`, the CLI, evals)."""

    tenant: str
    role: Role
    key_id: str | None = None
    key_name: str | None = None
    # The collections this key may touch; None: every collection of its tenant.
    collections: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    # When this key expires (a Unix time; None: never): the keys it makes expire no later.
    expires_at: float | None = None
    # Who did it, for the audit log when there is no key: "anonymous" (auth mode none), "cli".
    actor_name: str = "anonymous"

    @classmethod
    def anonymous(cls) -> Principal:
        """The one caller of a server running with auth mode `none`: admin of the default tenant."""
        return cls(tenant=DEFAULT_TENANT, role="admin", actor_name="anonymous")

    @classmethod
    def operator(cls, tenant: str = DEFAULT_TENANT) -> Principal:
        """The local operator (CLI commands, eval runs): admin of `tenant`."""
        return cls(tenant=tenant, role="admin", actor_name="cli")

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"key:{self.key_id}" if self.key_id else self.actor_name

    def has_role(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def may_use(self, collection: str) -> bool:
        """Whether this key's collection list allows `collection` (a logical name)."""
        return self.collections is None or collection in self.collections

    def collection(self, name: str) -> str:
        """The store name of this tenant's collection `name` (InvalidCollectionName for a bad name);
        CollectionNotFound when the key may not touch it: to the caller it does not exist."""
        validate_collection_name(name)
        if not self.may_use(name):
            raise CollectionNotFound(f"collection {name!r} not found")
        return store_name(self.tenant, name)

    def visible(self, store: str) -> str | None:
        """The logical name of store name `store` when it is this caller's to see, else None."""
        try:
            tenant, collection = split_store_name(store)
        except InvalidCollectionName:
            return None
        return collection if tenant == self.tenant and self.may_use(collection) else None

    def conversation_key(self, conversation_id: str) -> str:
        """Where this tenant's conversation `conversation_id` is stored: ids are per tenant, so the same
        id sent by another tenant names a different (empty) conversation."""
        if self.tenant == DEFAULT_TENANT and "/" not in conversation_id:
            return conversation_id  # as stored before tenants
        # A tenant's keys all start with "<tenant>/", and only that tenant makes them: the default
        # tenant's id "acme/x" is stored as "default/acme/x", never as tenant acme's "x".
        return f"{self.tenant}/{conversation_id}"
