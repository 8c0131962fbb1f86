"""Sentence-aware chunking sized in the embedding model's tokens (llama-index's SentenceSplitter)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

from ingest.types import Chunk, SourceDocument, make_chunk_id

# Metadata keys ragserver owns; user metadata with the same names is dropped, not allowed to shadow them.
RESERVED_KEYS = frozenset(
    {"doc_id", "source", "title", "content_hash", "version", "ingested_at", "chunk_index", "page", "section"}
)
# Metadata keys the loaders and the upload service set on every document (they win over user values).
SYSTEM_METADATA_KEYS = frozenset({"format", "filename", "original_filename"})
# Keys kept in the document record only, never copied onto each chunk.
RECORD_ONLY_KEYS = frozenset({"original_filename"})
# Keys an upload's metadata may not use: everything above, and the API's names for ids.
USER_RESERVED_KEYS = RESERVED_KEYS | SYSTEM_METADATA_KEYS | {"document_id", "chunk_id"}


def document_version(content_hash: str, pipeline_signature: str) -> str:
    """What decides skip vs replace: the content and the chunking/embedding setup that indexed it."""
    return hashlib.sha256(f"{content_hash}|{pipeline_signature}".encode()).hexdigest()[:20]


def flat_metadata(metadata: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """User metadata as the flat scalar values a vector store can filter on (others become strings).

    Keys a store cannot hold (empty, or starting with '$' or '#', which Chroma reserves) are dropped
    too: the API refuses them, but jobs and corpora from before that rule must not crash a write.
    """
    flat: dict[str, str | int | float | bool] = {}
    for key, value in metadata.items():
        if key in RESERVED_KEYS or key in RECORD_ONLY_KEYS or value is None:
            continue
        if not isinstance(key, str) or not key or key[0] in "$#":
            continue
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            value = str(value)  # beyond what a store's integers hold
        elif isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        flat[str(key)] = value if isinstance(value, str | int | float | bool) else str(value)
    return flat


class Chunker:
    """Splits documents into overlapping, sentence-aligned chunks of at most `chunk_size` tokens."""

    def __init__(self, chunk_size: int, chunk_overlap: int, count_tokens: Callable[[str], int]):
        from llama_index.core.node_parser import SentenceSplitter

        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        # SentenceSplitter wants a tokenizer returning a list; only its length matters.
        self._splitter = SentenceSplitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            tokenizer=lambda text: range(count_tokens(text)),  # type: ignore[arg-type,return-value]
        )

    @property
    def signature(self) -> str:
        return f"sentence-splitter:{self.chunk_size}:{self.chunk_overlap}"

    def split_text(self, text: str) -> list[str]:
        return [piece for piece in self._splitter.split_text(text) if piece.strip()]

    def chunk(self, doc: SourceDocument, *, version: str, ingested_at: float) -> list[Chunk]:
        """Chunks of one document, with ids that depend only on (doc_id, version, position)."""
        base = {
            **flat_metadata(doc.metadata),
            "doc_id": doc.doc_id,
            "source": doc.source,
            "title": doc.title,
            "content_hash": doc.content_hash,
            "version": version,
            "ingested_at": ingested_at,
        }
        chunks: list[Chunk] = []
        for segment in doc.segments:
            for piece in self.split_text(segment.text):
                meta = dict(base, chunk_index=len(chunks))
                if segment.page is not None:
                    meta["page"] = segment.page
                if segment.section:
                    meta["section"] = segment.section
                chunks.append(
                    Chunk(
                        chunk_id=make_chunk_id(doc.doc_id, version, len(chunks)),
                        doc_id=doc.doc_id,
                        text=piece,
                        metadata=meta,
                    )
                )
        return chunks


def embedding_text(chunk: Chunk) -> str:
    """What the embedder sees for a chunk: its title (and section) as context, then its text."""
    title = str(chunk.metadata.get("title") or "")
    section = str(chunk.metadata.get("section") or "")
    head = " - ".join(part for part in (title, section) if part and part not in chunk.text[:200])
    return f"{head}\n{chunk.text}" if head else chunk.text
