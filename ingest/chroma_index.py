"""`VectorIndex` on Chroma: an embedded PersistentClient by default, a Chroma server when configured.

This module is the only one that touches a raw Chroma collection. Each ragserver collection is two
Chroma collections: `rs_<name>` holds chunks with their embeddings and metadata, `rs_<name>.docs`
holds one record per document (see `ingest.vector_index`). The '.' cannot occur in a user's collection
name, so no user collection can land on another's records. A tenant's collection (store name
`<tenant>.<collection>`, see `ingest.vector_index.store_name`) is `rt_<tenant>.<collection>` and its
records `rt_<tenant>.<collection>.docs`; the default tenant's keep the `rs_` names from before tenants.

Data from before that rule named the records `rs_<name>__docs`, which the chunks of a user collection
`<name>__docs` collided with; opening a store renames such legacy record collections (`_migrate`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ingest.filters import MetadataFilter
from ingest.types import Chunk, ScoredChunk, doc_id_of
from ingest.vector_index import COLLECTION_NAME, CollectionNotFound, DocumentRecord, validate_store_name

_DOCS_SUFFIX = ".docs"
_LEGACY_DOCS_SUFFIX = "__docs"
_CHUNK_PREFIX = "rs_"
# A tenant's collections (store names `<tenant>.<collection>`): `rt_<tenant>.<collection>` and
# `rt_<tenant>.<collection>.docs`. A prefix of their own, so no tenant's name can be read as the
# records of a default-tenant collection (`rs_acme.docs`).
_TENANT_PREFIX = "rt_"


def _chroma_name(name: str, suffix: str = "") -> str:
    """The Chroma collection holding a store name's chunks (or, with `_DOCS_SUFFIX`, its records)."""
    prefix = _TENANT_PREFIX if "." in validate_store_name(name) else _CHUNK_PREFIX
    return f"{prefix}{name}{suffix}"


def _store_name_of(raw: str) -> str | None:
    """The store name whose records `raw` holds, or None when `raw` is not a records collection."""
    if not raw.endswith(_DOCS_SUFFIX):
        return None
    if raw.startswith(_CHUNK_PREFIX):
        name = raw[len(_CHUNK_PREFIX) : -len(_DOCS_SUFFIX)]
        return name if "." not in name else None
    if raw.startswith(_TENANT_PREFIX):
        name = raw[len(_TENANT_PREFIX) : -len(_DOCS_SUFFIX)]
        return name if name.count(".") == 1 else None
    return None


# Chroma needs a vector for every record; document records are looked up by id only.
_PLACEHOLDER = [1.0]


class ChromaIndex:
    """`VectorIndex` over one Chroma (embedded or server)."""

    def __init__(self, client: Any):
        self.client = client
        self._collections: dict[str, Any] = {}
        self.max_batch = int(client.get_max_batch_size()) if hasattr(client, "get_max_batch_size") else 5000

    @classmethod
    def open(cls, *, url: str | None, path: str | None) -> ChromaIndex:
        """An embedded store at `path`, or the Chroma server at `url` (http://host:port)."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if url:
            parsed = urlparse(url)
            client = chromadb.HttpClient(
                host=parsed.hostname or "127.0.0.1",
                port=parsed.port or 8000,
                ssl=parsed.scheme == "https",
                settings=chroma_settings,
            )
        else:
            if not path:
                raise ValueError("an embedded Chroma needs a path")
            client = chromadb.PersistentClient(path=path, settings=chroma_settings)
        index = cls(client)
        index.migrate()
        return index

    def _raw_names(self) -> list[str]:
        return [c if isinstance(c, str) else c.name for c in self.client.list_collections()]

    def migrate(self) -> list[str]:
        """Rename record collections of the legacy scheme (`rs_<name>__docs`) to `rs_<name>.docs`;
        returns the collection names migrated. Idempotent.

        A legacy name is ambiguous: `rs_hr__docs` is either the records of `hr` or the chunks of a
        collection `hr__docs`. Records never carry a `doc_id` (every chunk does) and always a
        `metadata_json`; an empty one counts as records when the chunks `rs_hr` exist.
        """
        names = set(self._raw_names())
        migrated: list[str] = []
        for raw in sorted(names, key=len, reverse=True):
            if not (raw.startswith(_CHUNK_PREFIX) and raw.endswith(_LEGACY_DOCS_SUFFIX)):
                continue
            user = raw[len(_CHUNK_PREFIX) : -len(_LEGACY_DOCS_SUFFIX)]
            target = f"{_CHUNK_PREFIX}{user}{_DOCS_SUFFIX}"
            if not COLLECTION_NAME.fullmatch(user) or target in names:
                continue
            coll = self.client.get_collection(raw, embedding_function=None)
            sample = coll.get(limit=1, include=["metadatas"])
            if sample["ids"]:
                meta = (sample["metadatas"] or [{}])[0] or {}
                is_records = "doc_id" not in meta and "metadata_json" in meta
            else:
                is_records = f"{_CHUNK_PREFIX}{user}" in names
            if not is_records:
                continue
            coll.modify(name=target)
            names.discard(raw)
            names.add(target)
            migrated.append(user)
        self._collections.clear()
        return migrated

    # -- collections ---------------------------------------------------------------------------

    def _chroma(self, name: str, suffix: str = "", create: bool = True) -> Any:
        key = _chroma_name(name, suffix)
        coll = self._collections.get(key)
        if coll is None:
            if create:
                coll = self.client.get_or_create_collection(
                    key, metadata={"hnsw:space": "cosine"}, embedding_function=None
                )
            else:
                try:
                    coll = self.client.get_collection(key, embedding_function=None)
                except Exception as exc:  # chromadb raises NotFoundError or ValueError by version
                    raise CollectionNotFound(f"collection {name!r} not found") from exc
            self._collections[key] = coll
        return coll

    # Raw Chroma collections: for this module only.
    def _chunks_of(self, name: str, create: bool = False) -> Any:
        return self._chroma(name, create=create)

    def _docs_of(self, name: str, create: bool = False) -> Any:
        return self._chroma(name, _DOCS_SUFFIX, create=create)

    def ensure_collection(self, name: str) -> None:
        self._chroma(name)
        self._chroma(name, _DOCS_SUFFIX)

    def has_collection(self, name: str) -> bool:
        try:
            self._docs_of(name)
            return True
        except CollectionNotFound:
            return False

    def list_collections(self) -> list[str]:
        names = (_store_name_of(raw) for raw in self._raw_names())
        return sorted(n for n in names if n is not None)

    def drop_collection(self, name: str) -> None:
        for suffix in ("", _DOCS_SUFFIX):
            key = _chroma_name(name, suffix)
            self._collections.pop(key, None)
            try:
                self.client.delete_collection(key)
            except Exception:  # already gone
                pass

    # -- documents -------------------------------------------------------------------------------

    def get_documents(self, name: str, doc_ids: list[str]) -> dict[str, DocumentRecord]:
        if not doc_ids:
            return {}
        try:
            docs = self._docs_of(name)
        except CollectionNotFound:
            return {}
        result = docs.get(ids=doc_ids, include=["metadatas"])
        return {
            i: DocumentRecord.from_row(i, m) for i, m in zip(result["ids"], result["metadatas"], strict=True)
        }

    def put_documents(self, name: str, records: list[DocumentRecord]) -> None:
        if not records:
            return
        self._docs_of(name, create=True).upsert(
            ids=[r.doc_id for r in records],
            embeddings=[_PLACEHOLDER] * len(records),
            metadatas=[r.to_row() for r in records],
        )

    def list_documents(self, name: str, *, limit: int = 100, offset: int = 0) -> list[DocumentRecord]:
        result = self._docs_of(name).get(include=["metadatas"], limit=limit, offset=offset)
        records = [
            DocumentRecord.from_row(i, m) for i, m in zip(result["ids"], result["metadatas"], strict=True)
        ]
        return records

    def iter_documents(self, name: str, page: int = 1000) -> Iterator[DocumentRecord]:
        offset = 0
        while True:
            batch = self.list_documents(name, limit=page, offset=offset)
            yield from batch
            if len(batch) < page:
                return
            offset += page

    def count_documents(self, name: str) -> int:
        return int(self._docs_of(name).count())

    def count_chunks(self, name: str) -> int:
        return int(self._chunks_of(name).count())

    def delete_documents(self, name: str, doc_ids: list[str]) -> list[str]:
        """Delete documents and all their chunks; returns the chunk ids removed."""
        removed: list[str] = []
        chunks = self._chunks_of(name)
        for start in range(0, len(doc_ids), 500):
            batch = doc_ids[start : start + 500]
            found = chunks.get(where={"doc_id": {"$in": batch}}, include=[])
            if found["ids"]:
                self._delete_ids(chunks, found["ids"])
                removed.extend(found["ids"])
            self._docs_of(name).delete(ids=batch)
        return removed

    # -- chunks ------------------------------------------------------------------------------------

    def upsert_chunks(self, name: str, chunks: list[Chunk], embeddings: np.ndarray) -> None:
        coll = self._chunks_of(name, create=True)
        for start in range(0, len(chunks), self.max_batch):
            part = chunks[start : start + self.max_batch]
            coll.upsert(
                ids=[c.chunk_id for c in part],
                embeddings=embeddings[start : start + self.max_batch],
                documents=[c.text for c in part],
                metadatas=[c.metadata for c in part],
            )

    def delete_stale_chunks(self, name: str, current: dict[str, str]) -> list[str]:
        """Remove chunks of the given documents whose version is not the current one.

        `current` maps doc_id -> the version just written. Returns the removed chunk ids.
        """
        if not current:
            return []
        coll = self._chunks_of(name, create=True)
        stale: list[str] = []
        doc_ids = list(current)
        for start in range(0, len(doc_ids), 500):
            batch = doc_ids[start : start + 500]
            found = coll.get(where={"doc_id": {"$in": batch}}, include=["metadatas"])
            stale.extend(
                cid
                for cid, meta in zip(found["ids"], found["metadatas"], strict=True)
                if meta.get("version") != current.get(str(meta.get("doc_id")))
            )
        self._delete_ids(coll, stale)
        return stale

    def _delete_ids(self, coll: Any, ids: list[str]) -> None:
        for start in range(0, len(ids), self.max_batch):
            coll.delete(ids=ids[start : start + self.max_batch])

    def iter_chunks(self, name: str, page: int = 2000) -> Iterator[Chunk]:
        """Every chunk of a collection (text and metadata, no vectors), page by page."""
        coll = self._chunks_of(name)
        offset = 0
        while True:
            got = coll.get(include=["documents", "metadatas"], limit=page, offset=offset)
            for cid, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                yield Chunk(
                    chunk_id=cid, doc_id=str(meta.get("doc_id")), text=text or "", metadata=dict(meta)
                )
            if len(got["ids"]) < page:
                return
            offset += page

    def get_chunks(self, name: str, chunk_ids: list[str]) -> list[Chunk]:
        got = self._chunks_of(name).get(ids=chunk_ids, include=["documents", "metadatas"])
        by_id = {
            cid: Chunk(chunk_id=cid, doc_id=str(meta.get("doc_id")), text=text or "", metadata=dict(meta))
            for cid, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
        }
        return [by_id[c] for c in chunk_ids if c in by_id]

    def chunk_ids(self, name: str) -> set[str]:
        return self._ids(self._chunks_of(name), None)

    def nearest(
        self, name: str, embedding: np.ndarray, k: int, flt: MetadataFilter | None = None
    ) -> list[ScoredChunk]:
        # Ids and distances only: Chroma's payload costs ~0.1 ms a row, and callers keep few hits.
        result = self._chunks_of(name).query(
            query_embeddings=[np.asarray(embedding, dtype=np.float32)],
            n_results=k,
            where=flt.where if flt else None,
            include=["distances"],
        )
        return [
            ScoredChunk(chunk_id=cid, doc_id=doc_id_of(cid), text="", score=1.0 - float(d), metadata={})
            for cid, d in zip(result["ids"][0], result["distances"][0], strict=True)
        ]

    def matching_ids(self, name: str, flt: MetadataFilter) -> set[str]:
        return self._ids(self._chunks_of(name), flt.where)

    def _ids(self, coll: Any, where: dict[str, Any] | None, page: int = 10000) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            got = coll.get(where=where, include=[], limit=page, offset=offset)["ids"]
            ids.update(got)
            if len(got) < page:
                return ids
            offset += page

    def heartbeat(self) -> bool:
        try:
            self.client.heartbeat()
            return True
        except Exception:
            return False
