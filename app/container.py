"""The object graph shared by the CLI, the HTTP server and the eval harness.

Everything heavy (models, stores) is built on first use and then reused, so a CLI command that only
lists documents never loads a model, and the server builds each piece once at start-up.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from typing import TYPE_CHECKING

from app.settings import Settings

if TYPE_CHECKING:
    from app.retrieval.retriever import Retriever
    from ingest.chunking import Chunker
    from ingest.embedder import Embedder
    from ingest.pipeline import IngestPipeline
    from ingest.vector_store import ChromaIndex


class Container:
    """Lazily built backends for one Settings."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        # Nothing may reach a model hub at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # pypdf logs every recoverable oddity of a PDF; ragserver reports what it could not read.
        logging.getLogger("pypdf").setLevel(logging.ERROR)

    @cached_property
    def store(self) -> ChromaIndex:
        from ingest.vector_store import ChromaIndex

        s = self.settings
        if not s.chroma.url:
            s.chroma_path.mkdir(parents=True, exist_ok=True)
        return ChromaIndex.open(url=s.chroma.url, path=str(s.chroma_path))

    @cached_property
    def embedder(self) -> Embedder:
        from ingest.embedder import build_embedder

        return build_embedder(self.settings.embedding)

    @cached_property
    def query_embedder(self) -> Embedder:
        """What embeds queries: the ONNX twin of the local model by default (see settings)."""
        from ingest.embedder import build_query_embedder

        s = self.settings
        threads = s.retrieval.query_threads
        return build_query_embedder(
            s.embedding, self.embedder, s.models_dir, threads=2 if threads is None else threads
        )

    @cached_property
    def chunker(self) -> Chunker:
        from ingest.chunking import Chunker

        c = self.settings.chunking
        return Chunker(c.chunk_size, c.chunk_overlap, self.embedder.count_tokens)

    @cached_property
    def pipeline(self) -> IngestPipeline:
        from ingest.pipeline import IngestPipeline

        return IngestPipeline(self.store, self.embedder, self.chunker, listeners=self.index_listeners)

    @cached_property
    def index_listeners(self) -> list:
        # One BM25 index per Container, kept in step with Chroma by the pipeline and read by the retriever.
        from app.retrieval.bm25_index import build_bm25_index

        return [build_bm25_index(self.settings, self.store)]

    @cached_property
    def retriever(self) -> Retriever:
        from app.retrieval.bm25_index import BM25Index
        from app.retrieval.retriever import build_retriever

        bm25 = next((x for x in self.index_listeners if isinstance(x, BM25Index)), None)
        return build_retriever(self.settings.retrieval, self.store, self.query_embedder, bm25)
