"""A BM25 index per collection (bm25s), derived from the vector index.

The vector index is the one source of truth for chunks. This index keeps only what BM25 needs: each
chunk's analysed terms (`terms.sqlite3`, a derived cache, so an upload re-indexes without re-reading
the collection) and immutable snapshots of the bm25s matrices with the chunk ids in index order
(`snap-<generation>-<n>/`, with `CURRENT` naming the live one, replaced atomically). No text and no
metadata are copied here: a search returns chunk ids and scores, and a filter arrives as the set of
chunk ids the vector index says pass it, so both stages share one filter semantics.

The ingest pipeline keeps it in step (`apply` after each write batch reached the store, `flush` at
the end of a run or delete). Being derived, a stale index is re-derived rather than trusted: the first
load in a process compares its ids with the store's, and every flush compares the counts; a mismatch
(a crash between the store and this index, a collection dropped behind its back, another process's
write) rebuilds the terms from the store. A process keeps a collection's snapshot in memory and only
stats `CURRENT` per query to notice another process's flush. Cross-process writers hold a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.retrieval.bm25_table import Row, TermTable
from ingest.bm25_text import Analyzer
from ingest.types import Chunk, ScoredChunk, doc_id_of
from ingest.vector_index import CollectionNotFound, VectorIndex, validate_store_name

if TYPE_CHECKING:
    from app.settings import Settings


@dataclass
class _Snapshot:
    """One collection's index as loaded in memory (immutable; replaced whole)."""

    generation: int
    marker: tuple[int, int]  # CURRENT's (mtime_ns, inode) when loaded
    chunk_ids: list[str]
    model: Any  # bm25s.BM25, None for an empty collection

    @cached_property
    def positions(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.chunk_ids)}

    def mask(self, allowed: Iterable[str]) -> np.ndarray:
        """True at the positions of `allowed` chunk ids."""
        mask = np.zeros(len(self.chunk_ids), dtype=bool)
        positions = self.positions
        picked = [positions[c] for c in allowed if c in positions]
        mask[picked] = True
        return mask


class BM25Index:
    """BM25 over a collection's chunks, derived from `store`; an `IndexListener` of the ingest pipeline."""

    def __init__(
        self,
        root: Path,
        store: VectorIndex,
        *,
        analyzer: Analyzer | None = None,
        k1: float = 1.2,
        b: float = 0.75,
        on_full_rebuild: Callable[[], None] | None = None,
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
        self.on_full_rebuild = on_full_rebuild
        # Set when a change feed keeps the term table current (`bm25_feed`): a flush then re-indexes
        # without comparing counts with the store, which a concurrent writer elsewhere makes differ.
        self.trust_table = False

    @property
    def signature(self) -> str:
        return f"{self.analyzer.signature}|bm25s-lucene:k1={self.k1}:b={self.b}"

    # -- IndexListener -------------------------------------------------------------------------

    def apply(self, collection: str, upserted: list[Chunk], deleted_ids: list[str]) -> None:
        """Record a write batch that already reached the store (searchable after `flush`)."""
        if not upserted and not deleted_ids:
            return
        self._table(collection).apply([self._row(c) for c in upserted], deleted_ids)

    def flush(self, collection: str) -> None:
        """Re-index the collection if its terms changed since the last snapshot; re-derive them from
        the store first when the two disagree on the chunk count."""
        with self._lock(collection), self._file_lock(collection):
            if not self.trust_table and self._table(collection).count() != self._store_count(collection):
                self._rebuild_locked(collection)
                return
            current = self._read_current(collection)
            if (
                current is None
                or current["generation"] != self._table(collection).generation()
                or (current.get("signature") != self.signature)
            ):
                self._write_snapshot(collection)

    # -- maintenance ---------------------------------------------------------------------------

    def rebuild(self, collection: str) -> int:
        """Re-derive every term from the store and re-index; returns the chunk count."""
        with self._lock(collection), self._file_lock(collection):
            return self._rebuild_locked(collection)

    def _rebuild_locked(self, collection: str) -> int:
        # Indexes from before BM25 was derived kept a full copy of every chunk here.
        (self._dir(collection) / "chunks.sqlite3").unlink(missing_ok=True)
        count = self._table(collection).replace_all(self._row(c) for c in self._store_chunks(collection))
        self._write_snapshot(collection)
        if self.on_full_rebuild is not None:
            self.on_full_rebuild()
        return count

    # -- a change feed (app.retrieval.bm25_feed) -------------------------------------------------

    def row(self, chunk: Chunk) -> Row:
        """A chunk's analysed terms, as the term table (and the feed) holds them."""
        return self._row(chunk)

    def apply_rows(self, collection: str, rows: list[Row], deleted_ids: list[str]) -> None:
        """Apply a change another process published (searchable after `refresh`)."""
        self._table(collection).apply(rows, deleted_ids)

    def refresh(self, collection: str) -> None:
        """Re-index a collection this process serves after feed changes; one it has not loaded yet is
        left for its first load (which checks it against the store)."""
        if collection not in self._snapshots:
            return
        with self._lock(collection), self._file_lock(collection):
            if self._table(collection).generation() != self._snapshots[collection].generation:
                self._write_snapshot(collection)

    def ensure_consistent(self, collection: str) -> bool:
        """Compare the derived ids with the store's; rebuild when they differ. True if it rebuilt."""
        self._verified.add(collection)
        if set(self._table(collection).ids()) == self._store_ids(collection):
            return False
        self.rebuild(collection)
        return True

    def drop(self, collection: str) -> None:
        """Forget a collection (when the store drops it)."""
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
        self, collection: str, query: str, k: int, allowed: set[str] | None = None
    ) -> list[ScoredChunk]:
        """The k best chunks for `query` (only chunks sharing a term with it, and only ids in
        `allowed` when given), best first, as ids and scores without text or metadata."""
        snap = self._snapshot(collection)
        if snap.model is None or k <= 0:
            return []
        vocab = snap.model.vocab_dict
        ids = [vocab[t] for t in self.analyzer.terms(query) if t in vocab]
        if not ids:
            return []
        scores = snap.model.get_scores_from_ids(ids)
        matching = scores > 0
        if allowed is not None:
            matching &= snap.mask(allowed)
        hits = np.flatnonzero(matching)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        picked = [int(i) for i in hits[np.argsort(-scores[hits], kind="stable")]]
        return [
            ScoredChunk(
                chunk_id=snap.chunk_ids[i],
                doc_id=doc_id_of(snap.chunk_ids[i]),
                text="",
                score=float(scores[i]),
                metadata={},
            )
            for i in picked
        ]

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
                if not self.store.has_collection(collection):
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
                return _Snapshot(-1, marker, [], None)
            folder = self._dir(collection) / current["dir"]
            ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
            model = None
            if ids:
                model = bm25s.BM25.load(str(folder), mmap=False, show_progress=False, verbosity=0)
            return _Snapshot(int(current["generation"]), marker, ids, model)

    def _write_snapshot(self, collection: str) -> None:
        """Index the terms as they are now into a new snapshot folder and point CURRENT at it."""
        import bm25s

        folder = self._dir(collection)
        self._reanalyze_stale(collection)
        generation, rows = self._table(collection).read_all()
        ids = [r[0] for r in rows]
        corpus = [r[1].split(" ") if r[1] else [] for r in rows]
        name = f"snap-{generation}-{time.time_ns()}"
        target = folder / name
        target.mkdir()
        model = None
        if ids:
            model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
            model.index(corpus, show_progress=False)
            model.save(str(target), show_progress=False)
        (target / "ids.json").write_text(json.dumps(ids), encoding="utf-8")
        pointer = folder / "CURRENT.tmp"
        pointer.write_text(json.dumps({"generation": generation, "dir": name, "signature": self.signature}))
        os.replace(pointer, folder / "CURRENT")
        for old in folder.glob("snap-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        # This process already holds everything the snapshot has: no need to read it back.
        self._snapshots[collection] = _Snapshot(generation, self._marker(collection), ids, model)

    def _reanalyze_stale(self, collection: str) -> None:
        """Re-derive terms stored under another analyzer (its settings changed) from the store."""
        table, signature = self._table(collection), self.analyzer.signature
        stale = table.ids_not_analyzed_by(signature)
        for start in range(0, len(stale), 1000):
            chunks = self.store.get_chunks(collection, stale[start : start + 1000])
            table.set_terms([(terms, sig, cid) for cid, terms, sig in map(self._row, chunks)])

    def _row(self, c: Chunk) -> Row:
        return (c.chunk_id, " ".join(self.analyzer.chunk_terms(c.text, c.metadata)), self.analyzer.signature)

    def _store_chunks(self, collection: str) -> Iterator[Chunk]:
        try:
            yield from self.store.iter_chunks(collection)
        except CollectionNotFound:
            return

    def _store_ids(self, collection: str) -> set[str]:
        try:
            return self.store.chunk_ids(collection)
        except CollectionNotFound:
            return set()

    def _store_count(self, collection: str) -> int:
        try:
            return self.store.count_chunks(collection)
        except CollectionNotFound:
            return 0

    def _table(self, collection: str) -> TermTable:
        return TermTable(self._dir(collection) / "terms.sqlite3")

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
            folder = self.root / validate_store_name(collection)
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


def build_bm25_index(
    settings: Settings, store: VectorIndex, *, on_full_rebuild: Callable[[], None] | None = None
) -> BM25Index:
    """The BM25 index under `settings.bm25_dir`, derived from `store`."""
    r = settings.retrieval
    analyzer = Analyzer(title_weight=r.bm25_title_weight)
    return BM25Index(
        settings.bm25_dir, store, analyzer=analyzer, k1=r.bm25_k1, b=r.bm25_b, on_full_rebuild=on_full_rebuild
    )
