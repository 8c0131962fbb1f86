"""The optional rerank stage: a sentence-transformers CrossEncoder scores (query, passage) pairs.

No cross-encoder installs offline, so the stage is off unless `retrieval.rerank_model_path` names a
local model folder (anything `CrossEncoder(path)` loads with one output label).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from ingest.chunking import embedding_text
from ingest.types import Chunk, ScoredChunk


class Reranker(Protocol):
    """Reorders retrieval hits for a query; returns them best first with the reranker's scores."""

    def rerank(self, query: str, hits: list[ScoredChunk]) -> list[ScoredChunk]: ...


class CrossEncoderReranker:
    """A local CrossEncoder, loaded once; callers are serialised (torch already uses every core)."""

    def __init__(
        self, model_path: str | Path, *, batch_size: int = 32, max_length: int = 512, device: str = "cpu"
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"rerank model path {path} is not a folder")
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(path), max_length=max_length, device=device, local_files_only=True)
        labels = int(self.model.num_labels or 1)
        if labels != 1:
            raise ValueError(
                f"rerank model {path} has {labels} output labels; a relevance cross-encoder has 1"
            )
        self.model_id = f"cross-encoder:{path.name}"
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def rerank(self, query: str, hits: list[ScoredChunk]) -> list[ScoredChunk]:
        if not hits:
            return []
        pairs = [(query, passage_text(h)) for h in hits]
        with self._lock:
            scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        rescored = [
            ScoredChunk(
                chunk_id=h.chunk_id, doc_id=h.doc_id, text=h.text, score=float(s), metadata=h.metadata
            )
            for h, s in zip(hits, scores, strict=True)
        ]
        return sorted(rescored, key=lambda h: -h.score)


def passage_text(hit: ScoredChunk) -> str:
    """The passage a reranker reads: the same title-prefixed text the embedder saw."""
    return embedding_text(
        Chunk(chunk_id=hit.chunk_id, doc_id=hit.doc_id, text=hit.text, metadata=hit.metadata)
    )
