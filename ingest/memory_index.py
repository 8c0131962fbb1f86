"""`VectorIndex` in process memory: a real implementation for tests and demos, not a mock.

Like haystack's `InMemoryDocumentStore` beside its real stores, it passes the same contract suite
(tests/contract/vector_index_contract.py) as `ingest.chroma_index.ChromaIndex`, and where the contract
is silent it behaves as Chroma does, so code tested against it meets no surprise on Chroma:

- a store name is two tables, like Chroma's two collections: chunks and document records.
  `ensure_collection` makes both; `upsert_chunks` and `delete_stale_chunks` make only the chunks, and
  `put_documents` only the records. A collection exists (`has_collection`, `list_collections`) when its
  records table does; a read of the table a method needs raises CollectionNotFound when it is missing.
- rows keep insertion order, which is what `list_documents`, `iter_*` and their paging follow; an upsert
  of an existing id keeps its place, a deleted and re-added id goes last.
- an upsert *merges* metadata into an existing row (Chroma's upsert does): a key the new metadata lacks
  keeps its old value, and a None value removes the key.
- `nearest` is exact cosine over unit float32 vectors: score = 1 - (1 - dot) in float32, as
  ChromaIndex turns Chroma's cosine distance into a score; ties keep insertion order. The search is
  exact, where Chroma's HNSW is approximate and now and then misses a hit. A collection's dimension is
  fixed by its first vector until it is dropped.
- filters follow Chroma's comparisons, quirks included (`ingest.metadata_rules`).
- argument errors Chroma refuses (duplicate or empty id lists, k < 1, a wrong dimension, metadata Chroma
  cannot hold) raise ValueError here, before anything changes; Chroma raises its own error classes.

Nothing survives the process: select it with `chroma.url = "memory://"` for tests and demos only.
One lock guards everything; the iterators take it once per page, as ChromaIndex asks Chroma per page.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ingest.filters import Condition, MetadataFilter
from ingest.metadata_rules import holds, passes, storable
from ingest.types import Chunk, ScoredChunk, doc_id_of
from ingest.vector_index import CollectionNotFound, DocumentRecord, validate_store_name

# The `chroma.url` that selects this index (app/container.py).
MEMORY_URL = "memory://"


@dataclass
class _Table:
    """One Chroma collection's worth of rows: id -> metadata (and text and unit vector, for chunks)."""

    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    dimension: int | None = None
    # (ids, matrix) for `nearest`, rebuilt after a write: a query stacks the vectors once, not per call.
    _matrix: tuple[list[str], np.ndarray] | None = None

    def upsert(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        for cid, meta in zip(ids, metadatas, strict=True):
            merged = {**self.metadata.get(cid, {}), **meta}
            self.metadata[cid] = {k: v for k, v in merged.items() if v is not None}
        self._matrix = None

    def delete(self, ids: Iterable[str]) -> None:
        for cid in ids:
            self.metadata.pop(cid, None)
            self.text.pop(cid, None)
            self.vectors.pop(cid, None)
        self._matrix = None

    def page(self, limit: int, offset: int) -> list[str]:
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must not be negative, got {limit} and {offset}")
        return list(self.metadata)[offset : offset + limit]

    def matrix(self) -> tuple[list[str], np.ndarray]:
        if self._matrix is None:
            ids = list(self.vectors)
            rows = [self.vectors[i] for i in ids]
            self._matrix = (ids, np.stack(rows) if rows else np.zeros((0, self.dimension or 0), np.float32))
        return self._matrix


class MemoryIndex:
    """`VectorIndex` in this process's memory; every instance is a backend of its own."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._chunks: dict[str, _Table] = {}
        self._docs: dict[str, _Table] = {}

    def _table(self, tables: dict[str, _Table], name: str, create: bool) -> _Table:
        table = tables.get(validate_store_name(name))
        if table is None:
            if not create:
                raise CollectionNotFound(f"collection {name!r} not found")
            table = tables[name] = _Table()
        return table

    def _chunk_table(self, name: str, create: bool = False) -> _Table:
        return self._table(self._chunks, name, create)

    def _record_table(self, name: str, create: bool = False) -> _Table:
        return self._table(self._docs, name, create)

    # -- collections ---------------------------------------------------------------------------

    def ensure_collection(self, name: str) -> None:
        with self._lock:
            self._chunk_table(name, create=True)
            self._record_table(name, create=True)

    def has_collection(self, name: str) -> bool:
        with self._lock:
            return validate_store_name(name) in self._docs

    def list_collections(self) -> list[str]:
        with self._lock:
            return sorted(self._docs)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            validate_store_name(name)
            self._chunks.pop(name, None)
            self._docs.pop(name, None)

    # -- documents -------------------------------------------------------------------------------

    def get_documents(self, name: str, doc_ids: list[str]) -> dict[str, DocumentRecord]:
        if not doc_ids:
            return {}
        with self._lock:
            try:
                docs = self._record_table(name)
            except CollectionNotFound:
                return {}
            _unique(doc_ids)
            return {i: DocumentRecord.from_row(i, docs.metadata[i]) for i in doc_ids if i in docs.metadata}

    def put_documents(self, name: str, records: list[DocumentRecord]) -> None:
        if not records:
            return
        ids = _unique([r.doc_id for r in records])
        rows = [storable(r.to_row()) for r in records]
        with self._lock:
            self._record_table(name, create=True).upsert(ids, rows)

    def list_documents(self, name: str, *, limit: int = 100, offset: int = 0) -> list[DocumentRecord]:
        with self._lock:
            docs = self._record_table(name)
            return [DocumentRecord.from_row(i, docs.metadata[i]) for i in docs.page(limit, offset)]

    def iter_documents(self, name: str, page: int = 1000) -> Iterator[DocumentRecord]:
        yield from _paged(lambda offset: self.list_documents(name, limit=page, offset=offset), page)

    def count_documents(self, name: str) -> int:
        with self._lock:
            return len(self._record_table(name).metadata)

    def delete_documents(self, name: str, doc_ids: list[str]) -> list[str]:
        """Delete documents and all their chunks (found by their `doc_id` metadata); returns the chunk
        ids removed."""
        with self._lock:
            chunks = self._chunk_table(name)
            if not doc_ids:
                return []
            docs = self._record_table(name)
            _unique(doc_ids)
            of_docs = Condition("doc_id", values=tuple(doc_ids))
            removed = [cid for cid, meta in chunks.metadata.items() if holds(meta, of_docs)]
            chunks.delete(removed)
            docs.delete(doc_ids)
            return removed

    # -- chunks ------------------------------------------------------------------------------------

    def upsert_chunks(self, name: str, chunks: list[Chunk], embeddings: np.ndarray) -> None:
        with self._lock:
            table = self._chunk_table(name, create=True)
            if not chunks:
                return
            ids = _unique([c.chunk_id for c in chunks])
            vectors = np.asarray(embeddings, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(chunks):
                raise ValueError(
                    f"{len(chunks)} chunks need a ({len(chunks)}, dimension) array of embeddings"
                )
            _check_dimension(table, vectors.shape[1])
            rows = [storable(c.metadata) for c in chunks]
            table.dimension = vectors.shape[1]
            table.upsert(ids, rows)
            for cid, c, vector in zip(ids, chunks, _unit(vectors), strict=True):
                table.text[cid] = c.text
                table.vectors[cid] = vector

    def delete_stale_chunks(self, name: str, current: dict[str, str]) -> list[str]:
        """Remove chunks of the given documents whose version is not the current one.

        `current` maps doc_id -> the version just written. Returns the removed chunk ids.
        """
        if not current:
            return []
        with self._lock:
            table = self._chunk_table(name, create=True)
            of_docs = Condition("doc_id", values=tuple(current))
            stale = [
                cid
                for cid, meta in table.metadata.items()
                if holds(meta, of_docs) and meta.get("version") != current.get(str(meta.get("doc_id")))
            ]
            table.delete(stale)
            return stale

    def count_chunks(self, name: str) -> int:
        with self._lock:
            return len(self._chunk_table(name).metadata)

    def iter_chunks(self, name: str, page: int = 2000) -> Iterator[Chunk]:
        """Every chunk of a collection (text and metadata, no vectors), page by page."""

        def one_page(offset: int) -> list[Chunk]:
            with self._lock:
                table = self._chunk_table(name)
                return [_chunk(table, cid) for cid in table.page(page, offset)]

        yield from _paged(one_page, page)

    def get_chunks(self, name: str, chunk_ids: list[str]) -> list[Chunk]:
        with self._lock:
            table = self._chunk_table(name)
            if not chunk_ids:
                raise ValueError("get_chunks needs at least one chunk id (Chroma refuses an empty list)")
            _unique(chunk_ids)
            return [_chunk(table, cid) for cid in chunk_ids if cid in table.metadata]

    def chunk_ids(self, name: str) -> set[str]:
        with self._lock:
            return set(self._chunk_table(name).metadata)

    # -- search ----------------------------------------------------------------------------------

    def nearest(
        self, name: str, embedding: np.ndarray, k: int, flt: MetadataFilter | None = None
    ) -> list[ScoredChunk]:
        query = np.asarray(embedding, dtype=np.float32)
        with self._lock:
            table = self._chunk_table(name)
            if k < 1:
                raise ValueError(f"k must be at least 1, got {k}")
            if query.ndim != 1:
                raise ValueError(f"the query embedding must be one vector, got shape {query.shape}")
            if table.dimension is None:
                return []
            _check_dimension(table, len(query))
            ids, matrix = table.matrix()
            if flt:
                keep = [i for i, cid in enumerate(ids) if passes(table.metadata[cid], flt)]
                ids, matrix = [ids[i] for i in keep], matrix[keep]
        distances = np.float32(1.0) - matrix @ _unit(query[None, :])[0]
        best = np.argsort(distances, kind="stable")[:k]
        return [
            ScoredChunk(
                chunk_id=ids[i],
                doc_id=doc_id_of(ids[i]),
                text="",
                score=1.0 - float(distances[i]),
                metadata={},
            )
            for i in best
        ]

    def matching_ids(self, name: str, flt: MetadataFilter) -> set[str]:
        with self._lock:
            table = self._chunk_table(name)
            return {cid for cid, meta in table.metadata.items() if passes(meta, flt)}

    def heartbeat(self) -> bool:
        return True


# -- rows --------------------------------------------------------------------------------------------


def _chunk(table: _Table, cid: str) -> Chunk:
    meta = {k: list(v) if isinstance(v, list) else v for k, v in table.metadata[cid].items()}
    return Chunk(chunk_id=cid, doc_id=str(meta.get("doc_id")), text=table.text.get(cid) or "", metadata=meta)


def _paged(fetch: Callable[[int], list[Any]], page: int) -> Iterator[Any]:
    # ChromaIndex would loop for ever on page 0 (an empty page is never shorter than 0).
    if page < 1:
        raise ValueError(f"page must be at least 1, got {page}")
    offset = 0
    while True:
        batch = fetch(offset)
        yield from batch
        if len(batch) < page:
            return
        offset += page


def _unique(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique (Chroma refuses duplicates)")
    return ids


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as Chroma's cosine space stores them (a zero vector stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def _check_dimension(table: _Table, dimension: int) -> None:
    if table.dimension is not None and dimension != table.dimension:
        raise ValueError(f"collection expects embeddings of dimension {table.dimension}, got {dimension}")
