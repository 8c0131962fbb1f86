"""A persisted BM25 index per collection (bm25s), kept in step with the vector store.

Layout under `root/<collection>/`:

- `chunks.sqlite3`: the chunk table (id, doc id, text, metadata, analyzed terms) and a generation
  counter. The ingest pipeline's `apply()` writes it in one transaction per write batch, right after
  the same batch reached Chroma.
- `snap-<generation>-<n>/`: an immutable snapshot (the bm25s matrices plus `chunks.jsonl` in index
  order), written by `flush()` at the end of an ingest run or delete, and `CURRENT` naming it
  (replaced atomically).

A process loads a collection's snapshot once and keeps it in memory (its texts and metadata also
serve the dense stage, so Chroma only returns ids); a query only stats `CURRENT` to notice another
process's flush. Consistency with Chroma, which the pipeline writes first: the first load in a process
compares the table's chunk ids with Chroma's and rebuilds the table from `ChromaIndex.iter_chunks`
when they differ; every flush compares the two chunk counts and does the same; a snapshot older than
the table is re-indexed on load. So a crash between Chroma and this index, or a collection dropped
behind its back, is repaired at the next load or flush. Cross-process writers hold a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.retrieval.bm25_table import ChunkTable, Row
from app.retrieval.bm25_text import Analyzer
from app.retrieval.filters import MetadataFilter
from app.retrieval.metadata_mask import MetadataColumns
from ingest.types import Chunk, ScoredChunk
from ingest.vector_store import ChromaIndex, CollectionNotFound, validate_collection_name

if TYPE_CHECKING:
    from app.settings import Settings


@dataclass
class _Snapshot:
    """One collection's index as loaded in memory (immutable; replaced whole)."""

    generation: int
    marker: tuple[int, int]  # CURRENT's (mtime_ns, inode) when loaded
    chunk_ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]
    model: Any  # bm25s.BM25, None for an empty collection

    @cached_property
    def positions(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.chunk_ids)}

    @cached_property
    def columns(self) -> MetadataColumns:
        return MetadataColumns(self.metadatas)


class BM25Index:
    """BM25 over a collection's chunks; an `IndexListener` of the ingest pipeline."""

    def __init__(
        self,
        root: Path,
        store: ChromaIndex | None = None,
        *,
        analyzer: Analyzer | None = None,
        k1: float = 1.2,
        b: float = 0.75,
    ):
        self.root = Path(root)
        self.store = store
        self.analyzer = analyzer or Analyzer()
        self.k1 = k1
        self.b = b
        self._snapshots: dict[str, _Snapshot] = {}
        self._verified: set[str] = set()
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()
        self._dirs: dict[str, Path] = {}

    @property
    def signature(self) -> str:
        return f"{self.analyzer.signature}|bm25s-lucene:k1={self.k1}:b={self.b}"

    # -- IndexListener -------------------------------------------------------------------------

    def apply(self, collection: str, upserted: list[Chunk], deleted_ids: list[str]) -> None:
        """Record a write batch that already reached the vector store (searchable after `flush`)."""
        if not upserted and not deleted_ids:
            return
        self._table(collection).apply([self._row(c) for c in upserted], deleted_ids)

    def flush(self, collection: str) -> None:
        """Re-index the collection if its table changed since the last snapshot.

        Also a cheap drift check: a table whose chunk count differs from the vector store's (a
        collection dropped and re-created behind this index, a write lost to a crash) is rebuilt.
        """
        with self._lock(collection), self._file_lock(collection):
            if self.store is not None and self._table(collection).count() != self._chroma_count(collection):
                self._rebuild_locked(collection, self._chroma_chunks(collection))
                return
            current = self._read_current(collection)
            if (
                current is None
                or current["generation"] != self._table(collection).generation()
                or (current.get("signature") != self.signature)
            ):
                self._write_snapshot(collection)

    # -- maintenance ---------------------------------------------------------------------------

    def rebuild(self, collection: str, chunks: Iterable[Chunk] | None = None) -> int:
        """Replace the table with `chunks` (default: every chunk in the vector store) and re-index."""
        with self._lock(collection), self._file_lock(collection):
            return self._rebuild_locked(
                collection, self._chroma_chunks(collection) if chunks is None else chunks
            )

    def _rebuild_locked(self, collection: str, chunks: Iterable[Chunk]) -> int:
        count = self._table(collection).replace_all(self._row(c) for c in chunks)
        self._write_snapshot(collection)
        return count

    def ensure_consistent(self, collection: str) -> bool:
        """Check the table against the vector store; rebuild when they differ. True if it rebuilt."""
        self._verified.add(collection)
        if self.store is None:
            return False
        ours = set(self._table(collection).ids())
        theirs = set(self._chroma_ids(collection))
        if ours == theirs:
            return False
        self.rebuild(collection)
        return True

    def drop(self, collection: str) -> None:
        """Forget a collection (when the vector store drops it)."""
        with self._lock(collection), self._file_lock(collection):
            self._snapshots.pop(collection, None)
            self._verified.discard(collection)
            folder = self._dir(collection)
            for child in folder.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()

    def count(self, collection: str) -> int:
        return len(self._snapshot(collection).chunk_ids)

    # -- queries -------------------------------------------------------------------------------

    def search(
        self, collection: str, query: str, k: int, filters: MetadataFilter | None = None
    ) -> list[ScoredChunk]:
        """The k best chunks for `query` by BM25 (only chunks sharing a term with it), best first."""
        snap = self._snapshot(collection)
        if snap.model is None or k <= 0:
            return []
        vocab = snap.model.vocab_dict
        ids = [vocab[t] for t in self.analyzer.terms(query) if t in vocab]
        if not ids:
            return []
        scores = snap.model.get_scores_from_ids(ids)
        matching = scores > 0
        if filters:
            # The same predicate as the dense stage's Chroma `where`, over the whole table at once.
            matching &= snap.columns.mask(filters)
        hits = np.flatnonzero(matching)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        picked = [int(i) for i in hits[np.argsort(-scores[hits], kind="stable")]]
        return [
            ScoredChunk(
                chunk_id=snap.chunk_ids[i],
                doc_id=str(snap.metadatas[i].get("doc_id")),
                text=snap.texts[i],
                score=float(scores[i]),
                metadata=dict(snap.metadatas[i]),
            )
            for i in picked
        ]

    def lookup(self, collection: str, chunk_ids: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Text and metadata of the given chunks that this index holds (the dense stage's payload).

        Chunk ids name one version of a chunk, so a hit here is the same text Chroma stores.
        """
        snap = self._snapshot(collection)
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for cid in chunk_ids:
            i = snap.positions.get(cid)
            if i is not None:
                found[cid] = (snap.texts[i], snap.metadatas[i])
        return found

    def load(self, collection: str) -> None:
        """Load (and on first use in this process, verify) a collection's index now."""
        self._snapshot(collection)

    # -- internals -----------------------------------------------------------------------------

    def _snapshot(self, collection: str) -> _Snapshot:
        snap = self._snapshots.get(collection)
        if snap is not None and snap.marker == self._marker(collection):
            return snap
        with self._lock(collection):
            snap = self._snapshots.get(collection)
            if snap is not None and snap.marker == self._marker(collection):
                return snap
            if collection not in self._verified:
                if self.store is not None and not self.store.has_collection(collection):
                    raise CollectionNotFound(f"collection {collection!r} not found")
                self.ensure_consistent(collection)
            current = self._read_current(collection)
            if (
                current is None
                or current.get("signature") != self.signature
                or (current["generation"] != self._table(collection).generation())
            ):
                self.flush(collection)
            snap = self._snapshots.get(collection)
            if snap is None or snap.marker != self._marker(collection):
                snap = self._load_snapshot(collection)
                self._snapshots[collection] = snap
            return snap

    def _load_snapshot(self, collection: str) -> _Snapshot:
        import bm25s

        with self._file_lock(collection, shared=True):
            marker = self._marker(collection)
            current = self._read_current(collection)
            if current is None:
                return _Snapshot(-1, marker, [], [], [], None)
            folder = self._dir(collection) / current["dir"]
            ids, texts, metas = [], [], []
            with (folder / "chunks.jsonl").open(encoding="utf-8") as fh:
                for line in fh:
                    row = json.loads(line)
                    ids.append(row["id"])
                    texts.append(row["text"])
                    metas.append(row["metadata"])
            model = None
            if ids:
                model = bm25s.BM25.load(str(folder), mmap=False, show_progress=False, verbosity=0)
            return _Snapshot(int(current["generation"]), marker, ids, texts, metas, model)

    def _write_snapshot(self, collection: str) -> None:
        """Index the table as it is now into a new snapshot folder and point CURRENT at it."""
        import bm25s

        folder = self._dir(collection)
        self._reanalyze_stale(collection)
        generation, rows = self._table(collection).read_all()
        ids = [r[0] for r in rows]
        texts = [r[1] for r in rows]
        metas = [r[2] for r in rows]
        corpus = [r[3].split(" ") if r[3] else [] for r in rows]
        name = f"snap-{generation}-{time.time_ns()}"
        target = folder / name
        target.mkdir()
        model = None
        if ids:
            model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
            model.index(corpus, show_progress=False)
            model.save(str(target), show_progress=False)
        with (target / "chunks.jsonl").open("w", encoding="utf-8") as fh:
            for cid, text, meta in zip(ids, texts, metas, strict=True):
                # `meta` is already JSON (as stored in the table).
                fh.write(f'{{"id": {json.dumps(cid)}, "text": {json.dumps(text, ensure_ascii=False)}, ')
                fh.write(f'"metadata": {meta}}}\n')
        pointer = folder / "CURRENT.tmp"
        pointer.write_text(json.dumps({"generation": generation, "dir": name, "signature": self.signature}))
        os.replace(pointer, folder / "CURRENT")
        for old in folder.glob("snap-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        # This process already holds everything the snapshot has: no need to read it back.
        self._snapshots[collection] = _Snapshot(
            generation, self._marker(collection), ids, texts, [json.loads(m) for m in metas], model
        )

    def _reanalyze_stale(self, collection: str) -> None:
        """Re-analyze rows stored under another analyzer (its settings changed)."""
        table, signature = self._table(collection), self.analyzer.signature
        stale = table.rows_not_analyzed_by(signature)
        if stale:
            table.set_terms(
                [
                    (" ".join(self.analyzer.chunk_terms(t, json.loads(m))), signature, cid)
                    for cid, t, m in stale
                ]
            )

    def _row(self, c: Chunk) -> Row:
        terms = " ".join(self.analyzer.chunk_terms(c.text, c.metadata))
        meta = json.dumps(c.metadata, ensure_ascii=False, sort_keys=True)
        return (c.chunk_id, c.doc_id, c.text, meta, terms, self.analyzer.signature)

    def _chroma_chunks(self, collection: str) -> Iterator[Chunk]:
        if self.store is None:
            return iter(())
        try:
            return self.store.iter_chunks(collection)
        except CollectionNotFound:
            return iter(())

    def _chroma_ids(self, collection: str, page: int = 10000) -> Iterator[str]:
        assert self.store is not None
        try:
            coll = self.store.chunks_of(collection)
        except CollectionNotFound:
            return
        offset = 0
        while True:
            got = coll.get(include=[], limit=page, offset=offset)["ids"]
            yield from got
            if len(got) < page:
                return
            offset += page

    def _chroma_count(self, collection: str) -> int:
        assert self.store is not None
        try:
            return self.store.count_chunks(collection)
        except CollectionNotFound:
            return 0

    def _table(self, collection: str) -> ChunkTable:
        return ChunkTable(self._dir(collection) / "chunks.sqlite3")

    def _read_current(self, collection: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(collection) / "CURRENT").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _marker(self, collection: str) -> tuple[int, int]:
        try:
            st = os.stat(self._dir(collection) / "CURRENT")
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_ino)

    def _dir(self, collection: str) -> Path:
        folder = self._dirs.get(collection)
        if folder is None:
            folder = self.root / validate_collection_name(collection)
            folder.mkdir(parents=True, exist_ok=True)
            self._dirs[collection] = folder
        return folder

    def _lock(self, collection: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(collection, threading.RLock())

    @contextlib.contextmanager
    def _file_lock(self, collection: str, shared: bool = False) -> Iterator[None]:
        # Serialises snapshot writers across processes (the CLI ingesting while the server runs).
        with (self._dir(collection) / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def build_bm25_index(settings: Settings, store: ChromaIndex | None) -> BM25Index:
    """The BM25 index under `settings.bm25_dir`, checked against `store` on first use of a collection."""
    r = settings.retrieval
    analyzer = Analyzer(title_weight=r.bm25_title_weight)
    return BM25Index(settings.bm25_dir, store, analyzer=analyzer, k1=r.bm25_k1, b=r.bm25_b)
