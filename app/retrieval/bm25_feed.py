"""BM25 on every replica: a change feed on a Redis stream (`retrieval.bm25_feed = redis`).

Replicas do not share a data dir, so each keeps its own BM25 index (`BM25Index`), and every change to
any collection reaches all of them through one Redis stream:

- whoever writes chunks (a `ragserver worker` ingesting, an API replica deleting a document) publishes
  each write batch, right after it reached the vector store, as one stream entry: the collection, the
  analysed terms of the chunks written and the ids deleted (`publisher`, the pipeline's listener);
- every process that searches follows the stream from where it joined (`follow`): it applies the
  entries to its term table and re-indexes the touched collections it serves, usually well under a
  second after the write. No change re-reads the collection from the store.

A replica that starts late, or restarts, first checks each collection it serves against the vector
store once (the index's usual first-load check) and re-derives it when they differ (counted in
`ragserver_bm25_full_rebuilds_total`); from then on the feed keeps it current. The stream is trimmed to
about `MAX_ENTRIES`, which only a replica that stops reading for that many writes could miss (it
catches up at its next start).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ingest.types import Chunk

if TYPE_CHECKING:
    from app.retrieval.bm25_index import BM25Index

log = logging.getLogger(__name__)

STREAM = "ragserver:bm25:changes"
MAX_ENTRIES = 100_000


class _Publisher:
    """The ingest pipeline's listener: each write batch becomes one stream entry."""

    def __init__(self, feed: BM25Feed):
        self.feed = feed

    def apply(self, collection: str, upserted: list[Chunk], deleted_ids: list[str]) -> None:
        if not upserted and not deleted_ids:
            return
        rows = [list(self.feed.bm25.row(c)) for c in upserted]
        fields: dict[Any, Any] = {
            "c": collection,
            "up": json.dumps(rows, ensure_ascii=False),
            "del": json.dumps(deleted_ids),
            "t": repr(time.time()),
        }
        self.feed.redis.xadd(self.feed.stream, fields, maxlen=MAX_ENTRIES, approximate=True)

    def flush(self, collection: str) -> None:
        """Nothing to do: followers re-index after each read."""


class BM25Feed:
    """Publishes this process's BM25 changes and (once `follow` is called) applies everyone's."""

    def __init__(self, redis_url: str, bm25: BM25Index, *, stream: str = STREAM, on_lag: Any = None):
        import redis

        self.bm25 = bm25
        self.stream = stream
        self.redis: Any = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.publisher = _Publisher(self)
        self.on_lag = on_lag
        self.applied = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def follow(self) -> None:
        """Start applying the stream's entries from now on (once; a daemon thread)."""
        with self._guard:
            if self._thread is not None:
                return
            # The index trusts its term table from now on: the feed, not a count check against the
            # store (which a concurrent writer makes differ for a moment), keeps it current.
            self.bm25.trust_table = True
            start = self._tail()
            self._thread = threading.Thread(target=self._run, args=(start,), name="bm25-feed", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        self.redis.close()

    def _tail(self) -> str:
        while not self._stop.is_set():
            try:
                last = self.redis.xrevrange(self.stream, count=1)
                return last[0][0].decode() if last else "0-0"
            except Exception as exc:  # Redis down at start: wait for it
                log.warning("BM25 feed: cannot read %s (%s); retrying", self.stream, exc)
                self._stop.wait(1.0)
        return "0-0"

    def _run(self, position: str) -> None:
        while not self._stop.is_set():
            try:
                reply = self.redis.xread({self.stream: position}, count=500, block=1000)
            except Exception as exc:
                log.warning("BM25 feed: read failed (%s); retrying", exc)
                self._stop.wait(1.0)
                continue
            touched: set[str] = set()
            newest = 0.0
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    position = entry_id.decode()
                    try:
                        collection = fields[b"c"].decode()
                        rows = [tuple(r) for r in json.loads(fields[b"up"])]
                        self.bm25.apply_rows(collection, rows, json.loads(fields[b"del"]))
                        newest = max(newest, float(fields.get(b"t", b"0")))
                        touched.add(collection)
                        self.applied += 1
                    except Exception:
                        log.exception("BM25 feed: entry %s could not be applied; skipped", position)
            for collection in touched:
                try:
                    self.bm25.refresh(collection)
                except Exception:
                    log.exception("BM25 feed: re-indexing %s failed", collection)
            if newest and self.on_lag is not None:
                self.on_lag(max(0.0, time.time() - newest))
