"""The ONNX Runtime query encoder: same vectors as the torch model, cached export, safe fallbacks."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from app.settings import EmbeddingSettings
from ingest import onnx_encoder
from ingest.embedder import MicroBatchingEmbedder, SentenceTransformerEmbedder
from ingest.onnx_encoder import OnnxExportError, OnnxSentenceEncoder, build_query_embedder, load_onnx_encoder

TEXTS = [
    "What is the capital of France?",
    "",
    "Ünïcödé, emoji 🚀 and CJK 中文 survive tokenisation.",
    "A long passage well past the model's 256-token window. " * 60,
    "short",
    "Vitamin D supplementation reduces the risk of fractures in older adults.",
]


def test_onnx_vectors_match_the_torch_model(embedder, onnx_cache_dir: Path) -> None:
    query_embedder = load_onnx_encoder(embedder, onnx_cache_dir, precision="fp32")
    # One padded batch of different lengths (one truncated), and each text on its own.
    batched = query_embedder.embed(TEXTS)
    single = np.vstack([query_embedder.embed([t]) for t in TEXTS])
    reference = embedder.embed(TEXTS)
    assert batched.shape == (len(TEXTS), embedder.dim) and batched.dtype == np.float32
    assert np.abs(batched - reference).max() < 1e-5
    assert np.abs(single - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert query_embedder.embed([]).shape == (0, embedder.dim)
    assert query_embedder.model_id == embedder.model_id
    assert query_embedder.count_tokens("hello world") == embedder.count_tokens("hello world")


def test_a_cached_export_is_reused(embedder, query_embedder, onnx_cache_dir: Path, monkeypatch) -> None:
    def no_export(*_: object) -> None:
        raise AssertionError("the cached export should have been used")

    monkeypatch.setattr(onnx_encoder, "_export", no_export)
    monkeypatch.setattr(onnx_encoder, "_quantize", no_export)
    again = load_onnx_encoder(embedder, onnx_cache_dir, precision="int8")
    assert again.path == query_embedder.path
    assert list(onnx_cache_dir.glob("*.tmp")) == []


def test_a_corrupt_cache_file_is_exported_again(embedder, query_embedder, tmp_path: Path, caplog) -> None:
    broken = tmp_path / query_embedder.path.name.replace(".int8.onnx", ".onnx")  # the fp32 export
    broken.write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING, logger="ingest.onnx_encoder"):
        encoder = load_onnx_encoder(embedder, tmp_path)
    assert "exporting again" in caplog.text
    assert encoder.path == broken and broken.stat().st_size > 1_000_000
    assert np.abs(encoder.embed(TEXTS[:2]) - embedder.embed(TEXTS[:2])).max() < 1e-5


def test_an_export_that_disagrees_is_never_used(embedder, onnx_cache_dir: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(onnx_encoder, "MAX_ABS_DIFF", -1.0)  # every export now "disagrees"
    with pytest.raises(OnnxExportError, match="disagrees with the torch model"):
        load_onnx_encoder(embedder, onnx_cache_dir)

    with caplog.at_level(logging.WARNING, logger="ingest.embedder"):
        chosen = build_query_embedder(
            EmbeddingSettings(query_backend="auto", query_precision="fp32"), embedder, onnx_cache_dir
        )
    assert chosen is embedder
    assert "query embeddings use torch" in caplog.text
    with pytest.raises(OnnxExportError):
        build_query_embedder(
            EmbeddingSettings(query_backend="onnx", query_precision="fp32"), embedder, onnx_cache_dir
        )


def test_backend_torch_skips_onnx(embedder, tmp_path: Path) -> None:
    chosen = build_query_embedder(EmbeddingSettings(query_backend="torch"), embedder, tmp_path)
    assert chosen is embedder
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def cls_pooling_model(embedder, tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformerEmbedder:
    """The same transformer with CLS pooling: a model shape the export does not cover."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling

    transformer = embedder.model[0]
    model = SentenceTransformer(modules=[transformer, Pooling(embedder.dim, pooling_mode="cls")])
    path = tmp_path_factory.mktemp("cls-model")
    model.save(str(path))
    return SentenceTransformerEmbedder(path)


def test_unsupported_models_fall_back_to_torch(cls_pooling_model, tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match="mean pooling"):
        load_onnx_encoder(cls_pooling_model, tmp_path)
    chosen = build_query_embedder(EmbeddingSettings(), cls_pooling_model, tmp_path)
    assert chosen is cls_pooling_model
    with pytest.raises(OnnxExportError, match="mean pooling"):
        build_query_embedder(EmbeddingSettings(query_backend="onnx"), cls_pooling_model, tmp_path)


def test_concurrent_queries_are_batched_into_the_right_rows(embedder, query_embedder) -> None:
    gate = threading.Event()

    def slow_start() -> None:
        gate.wait(5)  # hold the batcher so that every query below queues up behind the first

    batcher = MicroBatchingEmbedder(query_embedder, max_batch=8, thread_init=slow_start)
    queries = [f"query number {i} about {'cells ' * (i % 5)}proteins" for i in range(20)]
    futures = [batcher.submit([q]) for q in queries]
    gate.set()
    got = np.vstack([f.result(timeout=30) for f in futures])
    assert np.abs(got - query_embedder.embed(queries)).max() < 1e-5


def test_the_container_embeds_queries_with_onnx_by_default(make_container, query_embedder) -> None:
    from app.container import Container
    from app.settings import Settings

    # The real construction path (no injected encoder), on the session's export cache.
    container = Container(Settings(_env_file=None, data_dir=make_container().settings.data_dir))
    assert isinstance(container.query_embedder, OnnxSentenceEncoder)
    assert container.query_embedder.path == query_embedder.path
    assert container.retriever.embedder is container.query_embedder
    torch_container = make_container(embedding={"query_backend": "torch"})
    assert torch_container.retriever.embedder is torch_container.embedder


def test_remote_embedders_keep_their_own_queries(embedder, tmp_path: Path) -> None:
    remote = EmbeddingSettings(provider="openai")
    assert build_query_embedder(remote, embedder, tmp_path) is embedder
    with pytest.raises(ValueError, match="local embedding provider"):
        build_query_embedder(remote.model_copy(update={"query_backend": "onnx"}), embedder, tmp_path)


def test_an_unwritable_cache_dir_falls_back_to_torch(embedder, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    with pytest.raises(OnnxExportError, match="cannot write the ONNX export"):
        load_onnx_encoder(embedder, blocked / "models")
    assert build_query_embedder(EmbeddingSettings(), embedder, blocked / "models") is embedder


def test_an_export_onnx_runtime_cannot_load_falls_back_to_torch(
    embedder, onnx_cache_dir: Path, monkeypatch
) -> None:
    def unloadable(*_: object) -> None:
        raise RuntimeError("unsupported opset")

    monkeypatch.setattr(onnx_encoder, "_export", lambda *_: None)  # keep the cached file
    monkeypatch.setattr(onnx_encoder.OnnxSentenceEncoder, "__init__", unloadable)
    with pytest.raises(OnnxExportError, match="cannot load the export"):
        load_onnx_encoder(embedder, onnx_cache_dir)
    assert build_query_embedder(EmbeddingSettings(), embedder, onnx_cache_dir) is embedder


def test_documents_through_onnx_match_torch_in_their_order(embedder, onnx_cache_dir: Path) -> None:
    from ingest.onnx_encoder import OnnxDocumentEmbedder, build_document_embedder

    assert build_document_embedder(EmbeddingSettings(), embedder, onnx_cache_dir) is embedder
    documents = build_document_embedder(
        EmbeddingSettings(document_backend="onnx", document_threads=2, batch_size=4), embedder, onnx_cache_dir
    )
    assert isinstance(documents, OnnxDocumentEmbedder) and documents.model_id == embedder.model_id
    texts = TEXTS * 3  # 18 texts in batches of 4, sorted by length and put back in order
    assert float(np.abs(documents.embed(texts) - embedder.embed(texts)).max()) < 1e-4
    assert documents.embed([]).shape == (0, embedder.dim)
    with pytest.raises(ValueError, match="local embedding provider"):
        build_document_embedder(
            EmbeddingSettings(provider="openai", document_backend="onnx"), embedder, onnx_cache_dir
        )


def test_int8_queries_point_where_the_torch_vectors_do(embedder, onnx_cache_dir: Path) -> None:
    chosen = build_query_embedder(EmbeddingSettings(query_precision="int8"), embedder, onnx_cache_dir)
    assert isinstance(chosen, OnnxSentenceEncoder)
    fp32 = chosen.path.with_name(chosen.path.name.replace(".int8.onnx", ".onnx"))
    assert chosen.path.name.endswith(".int8.onnx") and chosen.path.stat().st_size < 0.7 * fp32.stat().st_size
    assert chosen.model_id == embedder.model_id  # the collection's model: only the query side is int8
    got, want = chosen.embed(TEXTS), embedder.embed(TEXTS)
    cosines = np.sum(got * want, axis=1)
    assert cosines.min() >= onnx_encoder.MIN_INT8_COSINE and np.abs(got - want).max() > 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Ranks like the torch model: each text's nearest neighbour among the others is the same.
    assert (np.argsort(-got @ want.T, axis=1)[:, 0] == np.arange(len(TEXTS))).all()
    # The same vector alone as in any batch (dynamic quantization would otherwise scale by the batch).
    alone = np.vstack([chosen.embed([t]) for t in TEXTS])
    assert np.array_equal(alone, got) and np.array_equal(chosen.embed(TEXTS[::-1]), got[::-1])
    assert list(onnx_cache_dir.glob("*.tmp")) == []


def test_an_int8_copy_that_disagrees_is_never_used(
    embedder, onnx_cache_dir: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(onnx_encoder, "MIN_INT8_COSINE", 1.01)
    with pytest.raises(OnnxExportError, match="cosine"):
        load_onnx_encoder(embedder, onnx_cache_dir, precision="int8")
    with caplog.at_level(logging.WARNING, logger="ingest.onnx_encoder"):
        chosen = build_query_embedder(EmbeddingSettings(query_precision="int8"), embedder, onnx_cache_dir)
    assert chosen is embedder and "query embeddings use torch" in caplog.text
