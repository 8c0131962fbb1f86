"""Query embeddings through ONNX Runtime: an fp32 export of the local sentence-transformers model
(transformer, mean pooling, L2 normalisation in one graph) that gives the same vectors as the torch
model at under half its CPU time for a short input (6.9 against 15.1 ms a query on one core here,
`ragserver bench queries`).

The export is made once from the weights already on disk (nothing is downloaded), cached under a key
derived from those weights, and checked against the torch model on probe sentences every time it is
loaded: an export that disagrees is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from ingest.embedder import Embedder, SentenceTransformerEmbedder

if TYPE_CHECKING:
    from app.settings import EmbeddingSettings

log = logging.getLogger(__name__)

# Bump when the exported graph changes: old cache files are then ignored.
EXPORT_VERSION = 1
# Largest element-wise difference from the torch model's vectors accepted at load.
MAX_ABS_DIFF = 1e-4
# The int8 twin (weights of every MatMul quantized per channel, activations quantized at run time) is
# not the same function: it is accepted when every probe's vector points where the torch model's
# does, to this cosine. SciFact's 300 test queries measured 0.987 at worst, 0.993 on average.
MIN_INT8_COSINE = 0.98
_PROBES = [
    "What is the capital of France?",
    "0-dimensional biomaterials show inductive properties.",
    "a",
    "Chunking splits documents into overlapping passages that fit the embedding model's window, "
    "and every chunk keeps its document id, its source and its position. " * 20,
]


class OnnxExportError(RuntimeError):
    """The model cannot be served through ONNX Runtime (unsupported shape, failed export or check)."""


class OnnxSentenceEncoder:
    """Embeds texts with an exported ONNX graph; thread-safe (ONNX Runtime sessions are)."""

    def __init__(
        self,
        onnx_path: Path,
        reference: SentenceTransformerEmbedder,
        threads: int = 1,
        one_at_a_time: bool = False,
    ):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(threads, 0)  # 0: ONNX Runtime's default (all cores)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would otherwise spin, taking CPU from everything else on a busy host.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.path = onnx_path
        self.model_id = reference.model_id
        self.dim = reference.dim
        self.max_seq_length = reference.max_seq_length
        tokenizer = Tokenizer.from_str(reference.model.tokenizer.backend_tokenizer.to_str())
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad_token = reference.model.tokenizer.pad_token or "[PAD]"
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad_token) or 0, pad_token=pad_token)
        self._tokenizer = tokenizer
        self._count = reference.count_tokens
        # A dynamically quantized graph scales its activations by the whole batch's range, so a text's
        # vector would depend on what it was batched with (and on the padding): the int8 encoder embeds
        # each text on its own, so a query gets the same vector whatever the load.
        self.one_at_a_time = one_at_a_time

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.one_at_a_time and len(texts) > 1:
            return np.vstack([self._run([text]) for text in texts])
        return self._run(texts)

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (vectors,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return self._count(text)


class OnnxDocumentEmbedder:
    """Document embedding through the ONNX export: texts sorted by length and embedded in batches of
    `batch_size`, so each batch pads only to its own longest text (length bucketing), then put back in
    order. Same `model_id` as the torch model: its vectors agree within MAX_ABS_DIFF per element, so a
    switch of backend does not make every document look changed."""

    def __init__(self, encoder: OnnxSentenceEncoder, batch_size: int = 32):
        self.encoder = encoder
        self.model_id = encoder.model_id
        self.dim = encoder.dim
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            picked = order[start : start + self.batch_size]
            out[picked] = self.encoder.embed([texts[i] for i in picked])
        return out

    def count_tokens(self, text: str) -> int:
        return self.encoder.count_tokens(text)


def build_document_embedder(settings: EmbeddingSettings, embedder: Embedder, cache_dir: Path) -> Embedder:
    """What embeds documents: `embedder` (torch), or with `embedding.document_backend = onnx` its ONNX
    twin with length bucketing and every core's intra-op threads."""
    if settings.document_backend == "torch":
        return embedder
    if settings.provider != "local":
        raise ValueError("embedding.document_backend=onnx needs the local embedding provider")
    threads = settings.document_threads or (os.cpu_count() or 1)
    encoder = load_onnx_encoder(cast(SentenceTransformerEmbedder, embedder), cache_dir, threads)
    return OnnxDocumentEmbedder(encoder, settings.batch_size)


def load_onnx_encoder(
    reference: SentenceTransformerEmbedder,
    cache_dir: Path,
    threads: int = 1,
    precision: Literal["fp32", "int8"] = "fp32",
) -> OnnxSentenceEncoder:
    """The ONNX twin of `reference`, exported into `cache_dir` on first use and verified against it;
    with `precision="int8"` its dynamically quantized copy (made once from the export, cached beside it).

    Raises OnnxExportError when the model is not a plain transformer + mean pooling model, when the
    export or the quantization fails, or when its vectors differ from the torch model's."""
    transformer = _check_supported(reference)
    path = Path(cache_dir) / f"{_safe(reference.model_id)}-{_weights_key(transformer)}.onnx"

    def make() -> None:
        _export(transformer, path)

    if precision == "int8":
        fp32, path = path, path.with_suffix(".int8.onnx")

        def make() -> None:
            if not fp32.exists():
                _export(transformer, fp32)
            _quantize(fp32, path)

    if not path.exists():
        make()
    try:
        encoder = OnnxSentenceEncoder(path, reference, threads, one_at_a_time=precision == "int8")
    except Exception as exc:  # a truncated or foreign file: make it again once
        log.warning("cached ONNX export %s failed to load (%s); exporting again", path, exc)
        make()
        try:
            encoder = OnnxSentenceEncoder(path, reference, threads, one_at_a_time=precision == "int8")
        except Exception as again:
            raise OnnxExportError(f"ONNX Runtime cannot load the export {path}: {again}") from again
    got, want = encoder.embed(_PROBES), reference.embed(_PROBES)
    if precision == "int8":
        cosine = float(np.min(np.sum(got * want, axis=1)))
        if cosine < MIN_INT8_COSINE:
            raise OnnxExportError(
                f"ONNX export {path} disagrees with the torch model (cosine {cosine:.4f} < {MIN_INT8_COSINE})"
            )
        return encoder
    diff = float(np.abs(got - want).max())
    if diff > MAX_ABS_DIFF:
        raise OnnxExportError(
            f"ONNX export {path} disagrees with the torch model (max difference {diff:.2e})"
        )
    return encoder


def _quantize(source: Path, path: Path) -> None:
    """Quantize every MatMul's weights of `source` to int8 per output channel (activations at run time:
    ONNX Runtime's dynamic quantization), written atomically to `path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    # quantize_dynamic advises "pre-processing" on the root logger: it changes nothing for this graph.
    advice = logging.Filter()
    advice.filter = lambda record: "pre-processing before quantization" not in record.getMessage()  # type: ignore[method-assign]
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            source, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except Exception as exc:
        raise OnnxExportError(f"quantizing the ONNX export to int8 failed: {exc}") from exc
    finally:
        logging.getLogger().removeFilter(advice)
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_query_embedder(
    settings: EmbeddingSettings, embedder: Embedder, cache_dir: Path, threads: int = 1
) -> Embedder:
    """The embedder for queries: the ONNX Runtime twin of the local model when the settings allow it
    and it exports and verifies (same vectors, about half the CPU time), else `embedder` itself."""
    if settings.query_backend == "torch" or settings.provider != "local":
        if settings.query_backend == "onnx":
            raise ValueError("embedding.query_backend=onnx needs the local embedding provider")
        return embedder
    try:
        return load_onnx_encoder(
            cast(SentenceTransformerEmbedder, embedder), cache_dir, threads, settings.query_precision
        )
    except (OnnxExportError, ImportError) as exc:
        if settings.query_backend == "onnx":
            raise
        log.warning("query embeddings use torch: %s", exc)
        return embedder


def _check_supported(reference: SentenceTransformerEmbedder) -> Any:
    """The model's transformer module, when the model is transformer + mean pooling (+ normalize)."""
    modules: list[Any] = list(reference.model)
    names = [type(m).__name__ for m in modules]
    if len(modules) < 2 or names[0] != "Transformer" or names[1] != "Pooling":
        raise OnnxExportError(f"only transformer + pooling models export to ONNX, not {names}")
    if any(name not in ("Normalize",) for name in names[2:]):
        raise OnnxExportError(f"unsupported modules after pooling for ONNX: {names[2:]}")
    pooling = modules[1].get_config_dict()
    # sentence-transformers >= 5 says pooling_mode="mean"; older versions set one flag per mode.
    flags = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    mean = pooling.get("pooling_mode") == "mean" or flags == ["pooling_mode_mean_tokens"]
    if not mean:
        raise OnnxExportError(f"only mean pooling exports to ONNX, not {pooling}")
    return modules[0]


def _weights_key(transformer: Any) -> str:
    digest = hashlib.sha256(f"v{EXPORT_VERSION}".encode())
    for name, tensor in sorted(transformer.auto_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _safe(model_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)


def _export(transformer: Any, path: Path) -> None:
    """Export transformer + mean pooling + normalisation to `path` (atomically: a crash or a
    concurrent exporter never leaves a partial file under the final name)."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    # A batch of two of different lengths, so neither dimension is specialised to its example size.
    example = transformer.tokenizer(
        ["an example query", "a longer example passage for the export"], padding=True, return_tensors="pt"
    )
    module = MeanPooled(transformer.auto_model).eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    except OSError as exc:  # e.g. a read-only data dir: serve queries with torch instead
        raise OnnxExportError(f"cannot write the ONNX export to {path.parent}: {exc}") from exc
    os.close(fd)
    log.info("exporting %s to ONNX (once; cached at %s)", type(transformer.auto_model).__name__, path)
    # The exporter's passes log every rewrite at INFO and warn about its own internals.
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example["input_ids"], example["attention_mask"]),
                tmp,
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except Exception as exc:
        raise OnnxExportError(f"exporting the embedding model to ONNX failed: {exc}") from exc
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
