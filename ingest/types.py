"""Data shapes shared by the ingestion pipeline, the retrievers and the server."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Segment:
    """A stretch of a document's text with where it came from (a PDF page, a markdown section)."""

    text: str
    page: int | None = None
    section: str | None = None


@dataclass
class SourceDocument:
    """One document as a loader read it, before chunking.

    `doc_id` is the document's identity inside a collection (with the collection, it decides whether a
    re-ingest skips, replaces or adds). `source` is where it came from (a path, an upload's file name,
    `corpus.jsonl#id`).
    """

    doc_id: str
    source: str
    title: str
    segments: list[Segment]
    metadata: dict[str, Any] = field(default_factory=dict)
    # A copy rebuilt from an index keeps its original's hash (so re-uploading the original is a no-op).
    original_hash: str | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.segments)

    @property
    def content_hash(self) -> str:
        """sha256 over everything that ends up in the index: title, segments and user metadata."""
        if self.original_hash:
            return self.original_hash
        h = hashlib.sha256()
        h.update(self.title.encode("utf-8"))
        for seg in self.segments:
            h.update(b"\x00")
            h.update(f"{seg.page}|{seg.section}|".encode())
            h.update(seg.text.encode("utf-8"))
        h.update(b"\x01")
        h.update(json.dumps(self.metadata, sort_keys=True, default=str).encode("utf-8"))
        return h.hexdigest()


@dataclass(frozen=True)
class LoadFailure:
    """A file that could not be read; the rest of the batch goes on."""

    source: str
    error: str


_CHUNK_ID_SEP = "::"


def make_chunk_id(doc_id: str, version: str, position: int) -> str:
    """A chunk's id names one version of one chunk: (document, version, position)."""
    return f"{doc_id}{_CHUNK_ID_SEP}{version}{_CHUNK_ID_SEP}{position}"


def doc_id_of(chunk_id: str) -> str:
    """The document id inside a chunk id (document ids may themselves contain the separator)."""
    return chunk_id.rsplit(_CHUNK_ID_SEP, 2)[0]


@dataclass
class Chunk:
    """A piece of a document as stored in the vector index (and the BM25 index)."""

    chunk_id: str
    doc_id: str
    text: str
    metadata: dict[str, Any]


@dataclass
class ScoredChunk:
    """A retrieval hit."""

    chunk_id: str
    doc_id: str
    text: str
    score: float
    metadata: dict[str, Any]
