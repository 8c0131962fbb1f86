"""The ingestion pipeline: load -> chunk -> embed -> upsert, streaming and idempotent.

Three stages run at once so embedding (the expensive part) never waits: a reader thread loads,
checks versions and chunks; the calling thread embeds; a writer thread upserts into the store.

Idempotence and crash safety: a document's version is (content hash, chunking and embedding setup).
A document whose stored record has that version is skipped without re-embedding. Otherwise its new
chunks are upserted under ids derived from (doc_id, version, position), chunks of any other version
are deleted, and only then is its document record written. A run killed at any point and run again
therefore ends with each document present once, at one version.

Cancellation: `ingest(..., cancel=event)` stops at the next boundary once the event is set (between
documents in the reader, between embedding slices, between write batches) and raises IngestCancelled;
what was written is complete per document (a record is written after its chunks), so running the same
input again finishes the job.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from ingest.chunking import Chunker, document_version, embedding_text
from ingest.embedder import Embedder
from ingest.types import Chunk, LoadFailure, SourceDocument
from ingest.vector_index import DocumentRecord, VectorIndex

_DONE = object()


class IngestCancelled(Exception):
    """`ingest` stopped early because its cancel event was set; running it again finishes the work."""


class IndexListener(Protocol):
    """Something kept in step with the vector store (the BM25 index)."""

    def apply(self, collection: str, upserted: list[Chunk], deleted_ids: list[str]) -> None: ...

    def flush(self, collection: str) -> None: ...


@dataclass
class IngestReport:
    """What a run did; `failed` lists per-file errors."""

    added: int = 0
    replaced: int = 0
    skipped: int = 0
    deleted: int = 0
    chunks_written: int = 0
    failed: list[LoadFailure] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "replaced": self.replaced,
            "skipped": self.skipped,
            "deleted": self.deleted,
            "chunks_written": self.chunks_written,
            "failed": [{"source": f.source, "error": f.error} for f in self.failed],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Work:
    """A document that needs (re)indexing, with its chunks."""

    record: DocumentRecord
    chunks: list[Chunk]
    replacing: bool


class IngestPipeline:
    """Indexes documents into a collection of a `VectorIndex`."""

    def __init__(
        self,
        store: VectorIndex,
        embedder: Embedder,
        chunker: Chunker,
        *,
        listeners: Iterable[IndexListener] = (),
        embed_window: int = 2048,
        lookup_batch: int = 128,
        write_batch: int = 256,
        cancel_slice: int = 64,
        labeler: Callable[[str, SourceDocument], dict[str, Any]] | None = None,
    ):
        self.store = store
        # Metadata to add to each new or changed document before it is chunked (a collection's document
        # labeler: app/services/document_labels.py); a key the document has already is kept.
        self.labeler = labeler
        self.embedder = embedder
        self.chunker = chunker
        self.listeners = list(listeners)
        self.embed_window = embed_window
        self.lookup_batch = lookup_batch
        self.write_batch = write_batch
        # With a cancel event, texts are embedded this many at a time, so a stop waits for one slice.
        self.cancel_slice = cancel_slice

    @property
    def signature(self) -> str:
        return f"{self.chunker.signature}|{self.embedder.model_id}"

    def ingest(
        self,
        items: Iterable[SourceDocument | LoadFailure],
        collection: str,
        *,
        on_document: Callable[[str, str, str | None], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> IngestReport:
        """Index every document of `items` into `collection`.

        `on_document(doc_id_or_source, status, error)` is called as each document finishes, with status
        added | replaced | skipped | failed (the CLI's progress bar and the job runner use it).
        Once `cancel` is set, stops at the next boundary and raises IngestCancelled.
        """
        started = time.perf_counter()
        self.store.ensure_collection(collection)
        report = IngestReport()
        notify = on_document or (lambda *_: None)
        # `halt` stops the helper threads when this run ends early (cancelled, or an error anywhere).
        halt = threading.Event()

        def cancelled() -> bool:
            return cancel is not None and cancel.is_set()

        def stopped() -> bool:
            return halt.is_set() or cancelled()

        work_q: queue.Queue[object] = queue.Queue(maxsize=4)
        write_q: queue.Queue[object] = queue.Queue(maxsize=4)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                batch: list[SourceDocument] = []
                for item in items:
                    if stopped():
                        return
                    if isinstance(item, LoadFailure):
                        report.failed.append(item)
                        notify(item.source, "failed", item.error)
                        continue
                    batch.append(item)
                    if len(batch) >= self.lookup_batch:
                        work_q.put(self._prepare(batch, collection, report, notify))
                        batch = []
                if batch and not stopped():
                    work_q.put(self._prepare(batch, collection, report, notify))
            except BaseException as exc:  # surfaced in the calling thread
                errors.append(exc)
            finally:
                work_q.put(_DONE)

        def writer() -> None:
            try:
                while (item := write_q.get()) is not _DONE:
                    if stopped():
                        continue  # drain without writing
                    works, vectors = cast(tuple[list[_Work], np.ndarray], item)
                    self._write(works, vectors, collection, report, notify)
            except BaseException as exc:
                errors.append(exc)
                # Keep draining so the embedding thread never blocks on a dead writer.
                while write_q.get() is not _DONE:
                    pass

        threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
        for t in threads:
            t.start()
        clean = False
        try:
            pending: list[_Work] = []
            pending_chunks = 0
            while (got := work_q.get()) is not _DONE:
                for work in got:  # type: ignore[attr-defined]
                    pending.append(work)
                    pending_chunks += len(work.chunks)
                    if pending_chunks >= self.embed_window:
                        write_q.put((pending, self._embed(pending, cancel)))
                        pending, pending_chunks = [], 0
                if errors or cancelled():
                    break
            if pending and not errors and not cancelled():
                write_q.put((pending, self._embed(pending, cancel)))
            clean = not errors and not cancelled()
        finally:
            if not clean:
                halt.set()
                _drain_until_done(work_q, threads[0])
            write_q.put(_DONE)
            for t in threads:
                t.join(timeout=None if clean else 5)
        if errors:
            raise errors[0]
        if cancelled():
            raise IngestCancelled(f"ingestion into {collection!r} stopped before the end")
        for listener in self.listeners:
            listener.flush(collection)
        report.seconds = time.perf_counter() - started
        return report

    def delete(self, collection: str, doc_ids: list[str]) -> int:
        """Delete documents and every chunk of theirs; returns how many documents existed."""
        existing = self.store.get_documents(collection, doc_ids)
        removed = self.store.delete_documents(collection, doc_ids)
        for listener in self.listeners:
            listener.apply(collection, [], removed)
            listener.flush(collection)
        return len(existing)

    def _prepare(
        self,
        docs: list[SourceDocument],
        collection: str,
        report: IngestReport,
        notify: Callable[[str, str, str | None], None],
    ) -> list[_Work]:
        # The same doc_id twice in one batch: the later one wins, as a second run would make it.
        unique = {d.doc_id: d for d in docs}
        known = self.store.get_documents(collection, list(unique))
        works: list[_Work] = []
        now = time.time()
        for doc in unique.values():
            version = document_version(doc.content_hash, self.signature)
            old = known.get(doc.doc_id)
            if old is not None and old.version == version:
                report.skipped += 1
                report.documents.append(doc.doc_id)
                notify(doc.doc_id, "skipped", None)
                continue
            if self.labeler is not None:
                added = {k: v for k, v in self.labeler(collection, doc).items() if k not in doc.metadata}
                if added:
                    doc = dataclasses.replace(doc, metadata={**doc.metadata, **added})
            chunks = self.chunker.chunk(doc, version=version, ingested_at=now)
            record = DocumentRecord(
                doc_id=doc.doc_id,
                source=doc.source,
                title=doc.title,
                content_hash=doc.content_hash,
                version=version,
                chunks=len(chunks),
                ingested_at=now,
                metadata=doc.metadata,
            )
            works.append(_Work(record, chunks, replacing=old is not None))
        return works

    def _embed(self, works: list[_Work], cancel: threading.Event | None = None) -> np.ndarray:
        texts = [embedding_text(c) for w in works for c in w.chunks]
        if cancel is None:
            return self.embedder.embed(texts)
        parts: list[np.ndarray] = []
        for start in range(0, len(texts), self.cancel_slice):
            if cancel.is_set():
                raise IngestCancelled("ingestion stopped while embedding")
            parts.append(self.embedder.embed(texts[start : start + self.cancel_slice]))
        return np.concatenate(parts) if parts else self.embedder.embed([])

    def _write(
        self,
        works: list[_Work],
        vectors: np.ndarray,
        collection: str,
        report: IngestReport,
        notify: Callable[[str, str, str | None], None],
    ) -> None:
        chunks = [c for w in works for c in w.chunks]
        self.store.upsert_chunks(collection, chunks, vectors)
        # Always look for stale chunks: a doc with no record may still have chunks from a killed run.
        stale = self.store.delete_stale_chunks(collection, {w.record.doc_id: w.record.version for w in works})
        self.store.put_documents(collection, [w.record for w in works])
        for listener in self.listeners:
            listener.apply(collection, chunks, stale)
        report.chunks_written += len(chunks)
        for w in works:
            if w.replacing:
                report.replaced += 1
            else:
                report.added += 1
            report.documents.append(w.record.doc_id)
            notify(w.record.doc_id, "replaced" if w.replacing else "added", None)


def _drain_until_done(q: queue.Queue[object], producer: threading.Thread, timeout: float = 5.0) -> None:
    """Empty `q` until its producer has finished (or `timeout`), so a producer blocked on a full queue
    can reach its next stop check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if q.get(timeout=0.05) is _DONE:
                return
        except queue.Empty:
            if not producer.is_alive():
                return
