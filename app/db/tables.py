"""Table definitions the code queries (SQLAlchemy Core), one `metadata` for every table.

The migrations create these tables; they never import this module (a revision must keep meaning what
it meant when written), so a schema change is a new revision plus an edit here, and
`tests/contract/test_job_stores.py` checks the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# No foreign key from files to jobs: databases adopted from before Alembic have none, and SQLite cannot
# add one without rebuilding the table. Files are only ever written together with their job.
ingest_jobs = sa.Table(
    "ingest_jobs",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("collection", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    # JSON as text, not a JSON type: the same column on SQLite and PostgreSQL, and what older files hold.
    sa.Column("metadata_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("owner", sa.Text, nullable=False, server_default=""),
    # The worker process running it ("host:pid"), how many times it was claimed, and when that worker
    # last said it was alive (the reaper re-queues a running job whose heartbeat went stale).
    sa.Column("worker", sa.Text, nullable=False, server_default=""),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("heartbeat_at", sa.Double),
    # list_unfinished: WHERE status IN (...) ORDER BY created_at
    sa.Index("ingest_jobs_by_status", "status", "created_at"),
)

ingest_job_files = sa.Table(
    "ingest_job_files",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("document_id", sa.Text, primary_key=True),
    # The file's index in the upload: files come back in upload order.
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("stored_path", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("chunks", sa.Integer, nullable=False),
    # The name exactly as uploaded; `filename` is the cleaned name shown (NULL: the same).
    sa.Column("original_filename", sa.Text),
)

# -- identity (docs/SECURITY.md) ----------------------------------------------------------------------

# A tenant exists once a key names it.
tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
)

# Keys are stored only as the SHA-256 of the key; `prefix` is the key's first characters, to tell keys
# apart in lists and logs. `collections_json`: a JSON list of the collections the key may touch (NULL: all
# of its tenant's).
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("collections_json", sa.Text),
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.Integer),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double),
    sa.Column("revoked_at", sa.Double),
    sa.Index("api_keys_by_tenant", "tenant", "created_at"),
)

# Every write: who (tenant, key), what (action), which object, when, and the outcome. `id` orders the
# entries of one instant and never leaves the server: clients see the random `public_id` ("aud_...").
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("public_id", sa.Text, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("collection", sa.Text),
    sa.Column("object_id", sa.Text),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("detail", sa.Text),
    sa.Column("request_id", sa.Text),
    sa.Index("audit_log_by_tenant", "tenant", "at"),
    sa.Index("audit_log_by_public_id", "public_id", unique=True),
)

# Server-side secrets shared by every replica (e.g. the key that makes document ids unguessable).
instance_secrets = sa.Table(
    "instance_secrets",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# -- response traces, feedback, engagement (issue 14) ------------------------------------------------

# One row per answer: how it was made. JSON as text (the same on SQLite and PostgreSQL).
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("response_id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("api", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text),
    sa.Column("collection", sa.Text, nullable=False),
    sa.Column("conversation_id", sa.Text),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("history_json", sa.Text, nullable=False),
    sa.Column("search_query", sa.Text, nullable=False),
    sa.Column("chunks_json", sa.Text, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("params_json", sa.Text, nullable=False),
    sa.Column("retrieval_json", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("citations_json", sa.Text, nullable=False),
    sa.Column("finish_reason", sa.Text),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("grounding", sa.Double),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("retrieve_ms", sa.Double),
    sa.Column("ttft_ms", sa.Double),
    sa.Column("total_ms", sa.Double),
    sa.Column("experiment", sa.Text),
    sa.Column("judge_json", sa.Text),
    # The experiment's arm, the unit it was assigned by (a conversation or key id), and the answer's
    # estimated cost from its model's prices (0 for a local model; NULL before issue 24).
    sa.Column("arm", sa.Text),
    sa.Column("unit", sa.Text),
    sa.Column("cost", sa.Double),
    sa.Index("responses_by_time", "created_at"),
    sa.Index("responses_by_collection", "collection", "created_at"),
    sa.Index("responses_by_experiment", "experiment", "created_at"),
)

# One feedback per (response, caller): sending again replaces it.
response_feedback = sa.Table(
    "response_feedback",
    metadata,
    sa.Column("response_id", sa.Text, primary_key=True),
    sa.Column("caller", sa.Text, primary_key=True),
    sa.Column("rating", sa.Text),
    sa.Column("score", sa.Double),
    sa.Column("comment", sa.Text),
    sa.Column("correction", sa.Text),
    sa.Column("tags_json", sa.Text, nullable=False),
    sa.Column("reviewed", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Index("response_feedback_by_rating", "rating", "updated_at"),
)

response_events = sa.Table(
    "response_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("response_id", sa.Text, nullable=False),
    sa.Column("caller", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("citation", sa.Integer),
    sa.Column("at", sa.Double, nullable=False),
    sa.Index("response_events_by_response", "response_id"),
)

# Blue/green collections: a collection name (store name) is an alias to one of its versions, each a
# physical collection of its own (version 1 is the collection as first created, under its own name).
collection_versions = sa.Table(
    "collection_versions",
    metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("physical", sa.Text, nullable=False),
    sa.Column("embedding_model", sa.Text),  # None: the server's configured model
    sa.Column("chunk_size", sa.Integer),
    sa.Column("chunk_overlap", sa.Integer),
    sa.Column("state", sa.Text, nullable=False),  # building | ready | failed | pruned
    sa.Column("documents", sa.Integer),
    sa.Column("chunks", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
)

collection_aliases = sa.Table(
    "collection_aliases",
    metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("previous", sa.Integer),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# -- the decision end of the loop (issue 24) ----------------------------------------------------------

# LLM endpoints a tenant's admin registered (those in the settings are every tenant's and not stored).
llm_models = sa.Table(
    "llm_models",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# A collection's answer defaults (prompt, model, retrieval settings), by store name (tenant-qualified).
answer_profiles = sa.Table(
    "answer_profiles",
    metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("profile_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# A/B experiments as data: the spec (arms, weights, overrides, metrics), its status and what happened.
experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # draft | running | paused | stopped
    sa.Column("stopped_arms_json", sa.Text, nullable=False),  # {"arm": {"at": ..., "reason": ...}}
    sa.Column("log_json", sa.Text, nullable=False),  # [{"at": ..., "event": ..., ...}]
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double),
)

# -- holistic answering (issue 25) --------------------------------------------------------------------

# A collection's routing chain (rules, curated answers, the LLM's model policy), by store name.
routing_chains = sa.Table(
    "routing_chains",
    metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("chain_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# Curated question/answer pairs: a reviewed correction becomes a `candidate`; an admin approves it; one whose
# cited documents changed since approval (documents_json: id -> content hash then) turns `stale`.
curated_answers = sa.Table(
    "curated_answers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("collection", sa.Text, nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("citations_json", sa.Text, nullable=False),
    sa.Column("documents_json", sa.Text, nullable=False),
    sa.Column("embedding_json", sa.Text),
    sa.Column("status", sa.Text, nullable=False),  # candidate | approved | stale | rejected
    sa.Column("source_response_id", sa.Text),
    sa.Column("note", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("approved_by", sa.Text),
    sa.Index("curated_answers_by_collection", "collection", "status"),
    sa.Index("curated_answers_by_source", "source_response_id"),
)

# A collection's document labeler: at ingestion, each new or changed document gets a label in a metadata
# field (zero-shot from label descriptions, or a trained classifier), by store name.
document_labelers = sa.Table(
    "document_labelers",
    metadata,
    sa.Column("collection", sa.Text, primary_key=True),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
