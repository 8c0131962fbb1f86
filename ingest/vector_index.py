"""The `VectorIndex` protocol: the one seam every vector backend sits behind, and the records it keeps.

A collection holds chunks (vector, text, metadata) and one record per document (its version and chunk
count; written after the chunks, so it doubles as the commit marker that makes ingestion crash-safe).
The index is the one source of truth for chunks: the BM25 index is derived from it, and metadata
filters are evaluated only here (`nearest` for the dense stage, `matching_ids` for BM25's mask).
Implementations: `ingest.chroma_index.ChromaIndex` (embedded or a Chroma server) and
`ingest.memory_index.MemoryIndex` (in process, nothing kept: tests and demos, `chroma.url=memory://`); all
three pass the contract suite in tests/contract/vector_index_contract.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ingest.errors import DomainError
from ingest.filters import MetadataFilter
from ingest.types import Chunk, ScoredChunk

COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# A collection's versions past the first are physical collections named `<store name>--v<N>` (blue/green
# rebuilds, app/services/collection_versions.py): names ending so are reserved.
VERSION_SUFFIX = re.compile(r"--v([0-9]{1,6})$")


class InvalidCollectionName(DomainError, ValueError):
    """A collection name that is not 1-63 letters, digits, '-' or '_' (starting alphanumeric)."""

    kind, code = "invalid", "invalid_collection_name"


class CollectionNotFound(DomainError, LookupError):
    """No such collection."""

    kind, code = "not_found", "collection_not_found"


def validate_collection_name(name: str) -> str:
    """`name`, or InvalidCollectionName (the whole string must match: a trailing newline does not)."""
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise InvalidCollectionName(
            f"invalid collection name {name!r}: "
            "use 1-63 letters, digits, '-' or '_', starting with a letter or digit"
        )
    if VERSION_SUFFIX.search(name):
        raise InvalidCollectionName(
            f"invalid collection name {name!r}: names ending in '--v<number>' are reserved for versions"
        )
    return name


def version_store_name(store: str, version: int) -> str:
    """The physical store name of version `version` of the collection `store` (v1: `store` itself)."""
    return store if version == 1 else f"{store}--v{version}"


def base_store_name(name: str) -> str:
    """The collection a physical store name belongs to (`hr--v3` -> `hr`; `hr` -> `hr`)."""
    return VERSION_SUFFIX.sub("", name)


# Tenants: lowercase letters, digits and '-' (no '_' or '.', so a store name splits one way only).
DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class InvalidTenantName(DomainError, ValueError):
    """A tenant name that is not 1-32 lowercase letters, digits or '-' (starting with a letter or digit)."""

    kind, code = "invalid", "invalid_tenant_name"


def validate_tenant_name(name: str) -> str:
    """`name`, or InvalidTenantName."""
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise InvalidTenantName(
            f"invalid tenant name {name!r}: use 1-32 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    return name


def store_name(tenant: str, collection: str) -> str:
    """The name a tenant's collection has in the index: `<tenant>.<collection>`, or the bare collection
    name for the default tenant (so a data dir from before tenants keeps its collections).

    Collection names hold no '.', so tenant A's `hr` and tenant B's `hr` can never share a store name."""
    validate_collection_name(collection)
    if validate_tenant_name(tenant) == DEFAULT_TENANT:
        return collection
    return f"{tenant}.{collection}"


def split_store_name(name: str) -> tuple[str, str]:
    """Inverse of `store_name`: (tenant, collection); InvalidCollectionName for a malformed name. A
    version's physical name splits as its collection's."""
    if not isinstance(name, str):
        raise InvalidCollectionName(f"invalid collection name {name!r}")
    tenant, dot, collection = base_store_name(name).rpartition(".")
    if not dot:
        return DEFAULT_TENANT, validate_collection_name(collection)
    try:
        validate_tenant_name(tenant)
    except InvalidTenantName as exc:
        raise InvalidCollectionName(f"invalid collection name {name!r}") from exc
    if tenant == DEFAULT_TENANT:  # the default tenant's names are bare: `default.hr` names nothing
        raise InvalidCollectionName(f"invalid collection name {name!r}")
    return tenant, validate_collection_name(collection)


def validate_store_name(name: str) -> str:
    """`name` if it is a collection's store name (`hr` or `acme.hr`), else InvalidCollectionName."""
    split_store_name(name)
    return name


@dataclass
class DocumentRecord:
    """What the index knows about one document."""

    doc_id: str
    source: str
    title: str
    content_hash: str
    version: str
    chunks: int
    ingested_at: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """Flat scalar fields, as a store keeps them (user metadata as one JSON string)."""
        return {
            "source": self.source,
            "title": self.title,
            "content_hash": self.content_hash,
            "version": self.version,
            "chunks": self.chunks,
            "ingested_at": self.ingested_at,
            "metadata_json": json.dumps(self.metadata, sort_keys=True, default=str),
        }

    @classmethod
    def from_row(cls, doc_id: str, row: dict[str, Any]) -> DocumentRecord:
        """Inverse of `to_row`."""
        return cls(
            doc_id=doc_id,
            source=str(row.get("source", "")),
            title=str(row.get("title", "")),
            content_hash=str(row.get("content_hash", "")),
            version=str(row.get("version", "")),
            chunks=int(row.get("chunks", 0)),
            ingested_at=float(row.get("ingested_at", 0.0)),
            metadata=json.loads(str(row.get("metadata_json") or "{}")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.doc_id,
            "source": self.source,
            "title": self.title,
            "content_hash": self.content_hash,
            "chunks": self.chunks,
            "ingested_at": self.ingested_at,
            "metadata": self.metadata,
        }


@runtime_checkable
class VectorIndex(Protocol):
    """Chunk and document storage for every collection of one backend. Blocking calls: async callers
    run them in a thread. Unknown collections raise CollectionNotFound unless the method says so."""

    # -- collections
    def ensure_collection(self, name: str) -> None:
        """Create the collection if it does not exist."""
        ...

    def has_collection(self, name: str) -> bool: ...

    def list_collections(self) -> list[str]:
        """Collection names, sorted."""
        ...

    def drop_collection(self, name: str) -> None:
        """Delete the collection and everything in it (no error when it does not exist)."""
        ...

    # -- documents
    def get_documents(self, name: str, doc_ids: list[str]) -> dict[str, DocumentRecord]:
        """The records of those ids that exist (a missing collection has none)."""
        ...

    def put_documents(self, name: str, records: list[DocumentRecord]) -> None: ...

    def list_documents(self, name: str, *, limit: int = 100, offset: int = 0) -> list[DocumentRecord]: ...

    def iter_documents(self, name: str, page: int = 1000) -> Iterator[DocumentRecord]: ...

    def count_documents(self, name: str) -> int: ...

    def delete_documents(self, name: str, doc_ids: list[str]) -> list[str]:
        """Delete documents and all their chunks; returns the chunk ids removed."""
        ...

    # -- chunks
    def upsert_chunks(self, name: str, chunks: list[Chunk], embeddings: np.ndarray) -> None: ...

    def delete_stale_chunks(self, name: str, current: dict[str, str]) -> list[str]:
        """Delete chunks of the given documents (doc_id -> current version) whose version differs;
        returns the removed chunk ids."""
        ...

    def count_chunks(self, name: str) -> int: ...

    def iter_chunks(self, name: str, page: int = 2000) -> Iterator[Chunk]:
        """Every chunk (text and metadata, no vectors), page by page."""
        ...

    def get_chunks(self, name: str, chunk_ids: list[str]) -> list[Chunk]:
        """The chunks of those ids that exist, in the order asked."""
        ...

    def chunk_ids(self, name: str) -> set[str]:
        """Every chunk id of the collection."""
        ...

    # -- search
    def nearest(
        self, name: str, embedding: np.ndarray, k: int, flt: MetadataFilter | None = None
    ) -> list[ScoredChunk]:
        """The k nearest chunks passing `flt` by cosine similarity, best first. Hits carry ids, the
        score (1 - cosine distance) and `doc_id`, but no text or metadata: callers fetch the payload of
        the few hits they keep with `get_chunks`."""
        ...

    def matching_ids(self, name: str, flt: MetadataFilter) -> set[str]:
        """Ids of the chunks passing `flt`: the one evaluator of the filter language (BM25's mask)."""
        ...

    def heartbeat(self) -> bool:
        """True when the backend answers; never raises."""
        ...
