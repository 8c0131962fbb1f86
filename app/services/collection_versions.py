"""Blue/green collections: a collection name is an alias to one of its versions.

Each version is a physical collection of the vector index (version 1 is the collection as first
created, under its own name; version N > 1 is `<name>--vN`) with the embedding model and chunking that
filled it. A rebuild fills a new version from the documents of the serving one while that one keeps
serving, catches up with the writes made meanwhile, then switches the alias in one UPDATE; a rollback
switches back; old versions stay until pruned.

Every request resolves the alias once (`resolve`) and runs on that physical collection to its end, so
an answer never mixes chunks of two versions; a version is dropped only by `prune`, never under a
request that resolved it a moment before the switch. Replicas see a switch within `alias_ttl_s`.

The registry lives in the relational database (tables `collection_versions`, `collection_aliases`),
shared by every replica. A collection without rows is version 1 under its own name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from app.db.tables import collection_aliases, collection_versions
from app.services.errors import Unavailable
from app.services.model_paths import check_model_dir, resolve_roots
from ingest.errors import DomainError
from ingest.types import Segment, SourceDocument, make_chunk_id
from ingest.vector_index import (
    VERSION_SUFFIX,
    CollectionNotFound,
    DocumentRecord,
    VectorIndex,
    base_store_name,
    version_store_name,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from app.retrieval.retriever import Retriever
    from ingest.pipeline import IngestPipeline

log = logging.getLogger(__name__)

STATES = ("building", "ready", "failed", "pruned")


class VersionConflict(DomainError, RuntimeError):
    """The operation cannot run in the collection's present state (a rebuild already running, no
    earlier version to roll back to, ...): a 409."""

    kind, code = "conflict", "version_conflict"


@dataclass(frozen=True)
class CollectionVersion:
    collection: str  # the store name the alias has
    version: int
    physical: str  # the vector index's collection holding it
    embedding_model: str | None  # None: the server's configured model
    chunk_size: int | None  # None: the server's configured chunking
    chunk_overlap: int | None
    state: str
    documents: int | None = None
    chunks: int | None = None
    error: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    active: bool = False

    @property
    def label(self) -> str:
        return f"v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


def first_version(collection: str) -> CollectionVersion:
    """What a collection without registry rows is: version 1 under its own name, server settings."""
    return CollectionVersion(collection, 1, collection, None, None, None, "ready", active=True)


class VersionRegistry:
    """The versions and aliases in the relational database."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def versions(self, collection: str) -> list[CollectionVersion]:
        with self.engine.connect() as conn:
            active = conn.execute(
                sa.select(collection_aliases.c.version).where(collection_aliases.c.collection == collection)
            ).scalar()
            rows = conn.execute(
                sa.select(collection_versions)
                .where(collection_versions.c.collection == collection)
                .order_by(collection_versions.c.version)
            ).mappings()
            return [CollectionVersion(**dict(r), active=r["version"] == active) for r in rows]

    def active(self, collection: str) -> CollectionVersion | None:
        """The version the alias names; None when the collection has no registry rows."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(collection_versions)
                    .select_from(
                        collection_aliases.join(
                            collection_versions,
                            sa.and_(
                                collection_versions.c.collection == collection_aliases.c.collection,
                                collection_versions.c.version == collection_aliases.c.version,
                            ),
                        )
                    )
                    .where(collection_aliases.c.collection == collection)
                )
                .mappings()
                .first()
            )
        return CollectionVersion(**dict(row), active=True) if row is not None else None

    def aliased(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(collection_aliases.c.collection)).scalars())

    def create(
        self,
        collection: str,
        *,
        embedding_model: str | None,
        chunk_size: int | None,
        chunk_overlap: int | None,
    ) -> CollectionVersion:
        """A new `building` version (registering the serving collection as version 1 on its first
        rebuild); VersionConflict while another rebuild of the collection is running."""
        now = time.time()
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(collection_versions.c.version, collection_versions.c.state).where(
                    collection_versions.c.collection == collection
                )
            ).all()
            if any(state == "building" for _, state in rows):
                raise VersionConflict(f"a rebuild of collection {base_name(collection)!r} is already running")
            if not rows:
                v1 = first_version(collection)
                conn.execute(
                    collection_versions.insert().values(
                        collection=collection,
                        version=1,
                        physical=v1.physical,
                        state="ready",
                        created_at=now,
                        finished_at=now,
                    )
                )
                conn.execute(
                    collection_aliases.insert().values(collection=collection, version=1, updated_at=now)
                )
            version = max((v for v, _ in rows), default=1) + 1
            values: dict[str, Any] = {
                "collection": collection,
                "version": version,
                "physical": version_store_name(collection, version),
                "embedding_model": embedding_model,
                "chunk_size": chunk_size,
                "chunk_overlap": chunk_overlap,
                "state": "building",
                "created_at": now,
            }
            # Two creators racing for one version number: the primary key lets one through.
            conn.execute(collection_versions.insert().values(**values))
        return CollectionVersion(**values)

    def create_once(self, collection: str, **kwargs: Any) -> CollectionVersion:
        """`create`, with a lost race for the version number (or version 1's row) as VersionConflict."""
        try:
            return self.create(collection, **kwargs)
        except sa.exc.IntegrityError as exc:
            raise VersionConflict(
                f"a rebuild of collection {base_name(collection)!r} is already running"
            ) from exc

    def finish(
        self,
        collection: str,
        version: int,
        state: str,
        *,
        documents: int | None = None,
        chunks: int | None = None,
        error: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            _set_state(conn, collection, version, state, documents=documents, chunks=chunks, error=error)

    def complete(self, collection: str, version: int, *, documents: int, chunks: int) -> None:
        """Mark a built version ready and point the alias at it, in one transaction."""
        with self.engine.begin() as conn:
            _set_state(conn, collection, version, "ready", documents=documents, chunks=chunks)
            self._switch(conn, collection, version)

    def previous(self, collection: str) -> int | None:
        """The version the alias named before its last switch."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(collection_aliases.c.previous).where(collection_aliases.c.collection == collection)
            ).scalar()

    def switch(self, collection: str, version: int) -> int:
        """Point the alias at `version` (ready); returns the version it named before."""
        with self.engine.begin() as conn:
            return self._switch(conn, collection, version)

    def _switch(self, conn: Any, collection: str, version: int) -> int:
        state = conn.execute(
            sa.select(collection_versions.c.state).where(
                collection_versions.c.collection == collection,
                collection_versions.c.version == version,
            )
        ).scalar()
        if state != "ready":
            raise VersionConflict(
                f"version v{version} of {base_name(collection)!r} is "
                + (f"{state}" if state else "unknown")
                + ", not ready"
            )
        current = conn.execute(
            sa.select(collection_aliases.c.version).where(collection_aliases.c.collection == collection)
        ).scalar()
        conn.execute(
            collection_aliases.update()
            .where(collection_aliases.c.collection == collection)
            .values(version=version, previous=current, updated_at=time.time())
        )
        return int(current or 1)

    def forget(self, collection: str) -> None:
        """Remove a collection's rows (the collection itself was deleted)."""
        with self.engine.begin() as conn:
            conn.execute(collection_aliases.delete().where(collection_aliases.c.collection == collection))
            conn.execute(collection_versions.delete().where(collection_versions.c.collection == collection))


def _set_state(conn: Any, collection: str, version: int, state: str, **counts: Any) -> None:
    conn.execute(
        collection_versions.update()
        .where(collection_versions.c.collection == collection, collection_versions.c.version == version)
        .values(state=state, finished_at=time.time(), **counts)
    )


def base_name(store: str) -> str:
    """The collection part of a store name, as a tenant calls it."""
    return base_store_name(store).rpartition(".")[2]


PipelineFactory = Callable[[str | None, int | None, int | None], "IngestPipeline"]
RetrieverFactory = Callable[[str | None], "Retriever"]


class Serving:
    """What a request runs on: the version serving a collection when the request started (its
    physical collection), and the pipeline (writes) and retriever (reads) of that version's model and
    chunking, each built on first use (a worker never builds a retriever, a search never a pipeline)."""

    def __init__(self, version: CollectionVersion, pipelines: PipelineFactory, retrievers: RetrieverFactory):
        self.version = version
        self._pipelines = pipelines
        self._retrievers = retrievers

    @property
    def physical(self) -> str:
        return self.version.physical

    @property
    def label(self) -> str:
        return self.version.label

    @cached_property
    def pipeline(self) -> IngestPipeline:
        v = self.version
        return self._pipelines(v.embedding_model, v.chunk_size, v.chunk_overlap)

    @cached_property
    def retriever(self) -> Retriever:
        return self._retrievers(self.version.embedding_model)


class CollectionVersions:
    """Resolves aliases (cached for `alias_ttl_s`) and runs rebuilds, rollbacks and prunes."""

    def __init__(
        self,
        store: VectorIndex,
        registry: VersionRegistry,
        pipeline_for: PipelineFactory,
        retriever_for: RetrieverFactory,
        *,
        alias_ttl_s: float = 1.0,
        on_drop: Callable[[str], None] | None = None,
        settle_s: float | None = None,
        model_roots: Sequence[str | Path] = (),
        load_model: Callable[[str], object] | None = None,
    ):
        self.store = store
        self.registry = registry
        self.pipeline_for = pipeline_for
        self.retriever_for = retriever_for
        self.alias_ttl_s = alias_ttl_s
        self.on_drop = on_drop
        # A rebuild's embedding_model must lie under one of these (none: no other model than the
        # configured one); `load_model` loads an allowed one, so a failed load is refused the same way.
        self.model_roots = resolve_roots(model_roots)
        self.load_model = load_model
        # After a switch, writes that resolved the old version a moment before may still land there:
        # one more catch-up pass runs this long after the switch.
        self.settle_s = alias_ttl_s + 1.0 if settle_s is None else settle_s
        self._cache: dict[str, tuple[float, CollectionVersion]] = {}
        self._lock = threading.Lock()

    # -- resolving ---------------------------------------------------------------------------------

    def resolve(self, collection: str) -> CollectionVersion:
        """The version serving `collection` now (version 1 under its own name when it has no rows)."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(collection)
        if cached is not None and now - cached[0] < self.alias_ttl_s:
            return cached[1]
        try:
            version = self.registry.active(collection) or first_version(collection)
        except sa.exc.SQLAlchemyError as exc:
            # The database is down: the version last seen keeps serving (it is never dropped under a
            # switch this process has not seen); a collection never resolved cannot be.
            if cached is not None:
                log.warning(
                    "collection registry unreachable (%r); %s stays on %s", exc, collection, cached[1].label
                )
                return cached[1]
            raise Unavailable(
                "the collection registry (database) is unavailable; retry later", code="unavailable"
            ) from exc
        with self._lock:
            self._cache[collection] = (now, version)
        return version

    def serving(self, collection: str) -> Serving:
        """The one place a request resolves its collection: the version serving `collection` now, with
        the pipeline (writes) and retriever (reads) of its model and chunking. Resolved once per
        request, so everything the request does lands on one physical collection even while a rebuild
        switches the alias."""
        return Serving(self.resolve(collection), self.pipeline_for, self.retriever_for)

    def forget_cached(self, collection: str) -> None:
        with self._lock:
            self._cache.pop(collection, None)

    def exists(self, collection: str) -> bool:
        return self.store.has_collection(self.resolve(collection).physical)

    def collections(self) -> list[str]:
        """Every collection's store name (not its versions)."""
        names = {n for n in self.store.list_collections() if not VERSION_SUFFIX.search(n)}
        names.update(self.registry.aliased())
        return sorted(names)

    def versions(self, collection: str) -> list[CollectionVersion]:
        """The collection's versions (just version 1 when it was never rebuilt); CollectionNotFound."""
        rows = self.registry.versions(collection)
        if not rows:
            if not self.store.has_collection(collection):
                raise CollectionNotFound(f"collection {base_name(collection)!r} not found")
            v1 = first_version(collection)
            return [
                CollectionVersion(
                    **{
                        **asdict(v1),
                        "documents": self.store.count_documents(collection),
                        "chunks": self.store.count_chunks(collection),
                    }
                )
            ]
        # Version 1 is registered without counts (its rows predate the registry): count it here.
        return [
            CollectionVersion(
                **{
                    **asdict(v),
                    "documents": self.store.count_documents(v.physical),
                    "chunks": self.store.count_chunks(v.physical),
                }
            )
            if v.state == "ready" and v.documents is None and self.store.has_collection(v.physical)
            else v
            for v in rows
        ]

    # -- rebuild -----------------------------------------------------------------------------------

    def start_rebuild(
        self,
        collection: str,
        *,
        embedding_model: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> CollectionVersion:
        """Register a new `building` version (CollectionNotFound, VersionConflict, ModelNotAllowed for
        an `embedding_model` that is not a model under the model roots); `run_rebuild` fills it."""
        if not self.exists(collection):
            raise CollectionNotFound(f"collection {base_name(collection)!r} not found")
        if embedding_model:
            check_model_dir(embedding_model, self.model_roots, self.load_model)
        # Fails early (bad chunking) rather than after registering a version.
        self.pipeline_for(embedding_model, chunk_size, chunk_overlap)
        return self.registry.create_once(
            collection, embedding_model=embedding_model, chunk_size=chunk_size, chunk_overlap=chunk_overlap
        )

    def run_rebuild(
        self, target: CollectionVersion, *, on_progress: Callable[[int], None] | None = None
    ) -> CollectionVersion:
        """Fill `target` from the serving version, catch up, switch the alias, catch up once more.
        On failure the version is marked failed (and its partial collection dropped); the alias never
        moved."""
        collection = target.collection
        try:
            pipeline = self.pipeline_for(target.embedding_model, target.chunk_size, target.chunk_overlap)
            source = self.resolve_fresh(collection)
            self.store.drop_collection(target.physical)  # leftovers of an earlier failed attempt
            self.store.ensure_collection(target.physical)
            copied: dict[str, str] = {}
            done = self._copy_changes(source.physical, target.physical, pipeline, copied, on_progress)
            for _ in range(5):  # writes made while copying: until a pass finds none (bounded)
                if not self._copy_changes(source.physical, target.physical, pipeline, copied, on_progress):
                    break
            # The new version's query encoder is built before the switch, not on its first request.
            self.retriever_for(target.embedding_model)
            self.registry.complete(
                collection,
                target.version,
                documents=self.store.count_documents(target.physical),
                chunks=self.store.count_chunks(target.physical),
            )
            self.forget_cached(collection)
            log.info(
                "collection %s: v%d (%d documents copied) now serves, v%d kept",
                collection,
                target.version,
                done,
                source.version,
            )
        except Exception as exc:
            log.exception("rebuild of %s into v%d failed", collection, target.version)
            self.registry.finish(collection, target.version, "failed", error=f"{type(exc).__name__}: {exc}")
            self._drop(target.physical)
            raise
        # Writes that resolved the old version just before the switch.
        time.sleep(self.settle_s)
        try:
            self._copy_changes(source.physical, target.physical, pipeline, copied, on_progress)
            self.registry.finish(
                collection,
                target.version,
                "ready",
                documents=self.store.count_documents(target.physical),
                chunks=self.store.count_chunks(target.physical),
            )
        except Exception:
            log.exception("catching up v%d of %s after the switch failed", target.version, collection)
        return next(v for v in self.registry.versions(collection) if v.version == target.version)

    def resolve_fresh(self, collection: str) -> CollectionVersion:
        self.forget_cached(collection)
        return self.resolve(collection)

    def _copy_changes(
        self,
        source: str,
        target: str,
        pipeline: IngestPipeline,
        copied: dict[str, str],
        on_progress: Callable[[int], None] | None,
        batch: int = 64,
    ) -> int:
        """Copy the documents of `source` added or changed since `copied` (doc id -> version copied)
        into `target`, and delete there the ones gone from `source`; returns how many changed."""
        records = {r.doc_id: r for r in self.store.iter_documents(source)}
        todo = [r for r in records.values() if copied.get(r.doc_id) != r.version]
        gone = [d for d in copied if d not in records]
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            docs = [self.source_document(source, r) for r in part]
            report = pipeline.ingest([d for d in docs if d is not None], target)
            if report.failed:
                raise RuntimeError(f"{report.failed[0].source}: {report.failed[0].error}")
            for record, doc in zip(part, docs, strict=True):
                if doc is not None:
                    copied[record.doc_id] = record.version
            if on_progress is not None:
                on_progress(len(copied))
        if gone:
            pipeline.delete(target, gone)
            for doc_id in gone:
                copied.pop(doc_id, None)
        return len(todo) + len(gone)

    def source_document(self, collection: str, record: DocumentRecord) -> SourceDocument | None:
        """A document as its chunks hold it: consecutive chunks of one page/section merged at their
        overlap. None when its chunks are gone (deleted meanwhile)."""
        ids = [make_chunk_id(record.doc_id, record.version, i) for i in range(record.chunks)]
        found = self.store.get_chunks(collection, ids) if ids else []  # a store refuses an empty id list
        chunks = sorted(found, key=lambda c: int(c.metadata.get("chunk_index", 0)))
        if len(chunks) != len(ids):
            return None
        segments: list[Segment] = []
        key: tuple[Any, Any] | None = None
        texts: list[str] = []
        for chunk in chunks:
            here = (chunk.metadata.get("page"), chunk.metadata.get("section"))
            if texts and here != key:
                segments.append(Segment(_merge(texts), key[0] if key else None, key[1] if key else None))
                texts = []
            key = here
            texts.append(chunk.text)
        if texts:
            segments.append(Segment(_merge(texts), key[0] if key else None, key[1] if key else None))
        return SourceDocument(
            doc_id=record.doc_id,
            source=record.source,
            title=record.title,
            segments=segments,
            metadata=dict(record.metadata),
            original_hash=record.content_hash,
        )

    # -- rollback and prune ------------------------------------------------------------------------

    def rollback(self, collection: str, to: int | None = None) -> CollectionVersion:
        """Switch the alias back: to version `to`, else to the version it named before, else to the
        newest ready version older than the serving one. VersionConflict when there is none."""
        rows = self.registry.versions(collection)
        if not rows:
            if not self.store.has_collection(collection):
                raise CollectionNotFound(f"collection {base_name(collection)!r} not found")
            raise VersionConflict(
                f"collection {base_name(collection)!r} has one version: nothing to roll back to"
            )
        active = next((v for v in rows if v.active), rows[0])
        ready = {v.version: v for v in rows if v.state == "ready" and v.version != active.version}
        if to is not None:
            if to == active.version:
                raise VersionConflict(f"v{to} already serves {base_name(collection)!r}")
            if to not in ready:
                raise VersionConflict(f"v{to} of {base_name(collection)!r} is not a ready version")
            target = ready[to]
        else:
            previous = self.registry.previous(collection)
            older = [v for v in sorted(ready) if v < active.version]
            pick = previous if previous in ready else (older[-1] if older else None)
            if pick is None:
                raise VersionConflict(f"collection {base_name(collection)!r} has no earlier ready version")
            target = ready[pick]
        self.registry.switch(collection, target.version)
        self.forget_cached(collection)
        return CollectionVersion(**{**asdict(target), "active": True})

    def prune(self, collection: str, keep: int = 0, *, abandoned: bool = False) -> list[CollectionVersion]:
        """Drop the versions not serving (keeping the newest `keep` ready ones); returns the dropped
        versions. A `building` version is dropped only with `abandoned` (its rebuild died with its
        process: nothing else ends it), so never under a running rebuild by default."""
        rows = self.registry.versions(collection)
        droppable = ("ready", "failed", "building") if abandoned else ("ready", "failed")
        inactive = [v for v in rows if not v.active and v.state in droppable]
        ready = sorted((v for v in inactive if v.state == "ready"), key=lambda v: v.version, reverse=True)
        kept = {v.version for v in ready[:keep]}
        dropped = [v for v in inactive if v.version not in kept]
        for v in dropped:
            self._drop(v.physical)
            self.registry.finish(collection, v.version, "pruned", documents=0, chunks=0)
        return dropped

    def delete_collection(self, collection: str) -> None:
        """Drop every version of a collection and its registry rows."""
        for v in self.registry.versions(collection):
            self._drop(v.physical)
        self._drop(collection)
        self.registry.forget(collection)
        self.forget_cached(collection)

    def _drop(self, physical: str) -> None:
        self.store.drop_collection(physical)
        if self.on_drop is not None:
            self.on_drop(physical)


def _merge(texts: list[str]) -> str:
    """Consecutive chunk texts as one text: each next chunk's start that repeats the previous one's end
    (the chunker's overlap) is written once."""
    out = texts[0]
    for text in texts[1:]:
        overlap = _overlap(out, text)
        out = out + text[overlap:] if overlap else out + " " + text
    return out


def _overlap(left: str, right: str, limit: int = 4000) -> int:
    """The length of the longest suffix of `left` that is a prefix of `right` (at least 8 characters)."""
    tail = left[-limit:]
    for size in range(min(len(tail), len(right)), 7, -1):
        if tail.endswith(right[:size]):
            return size
    return 0
