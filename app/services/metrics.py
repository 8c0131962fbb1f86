"""Prometheus metrics, one registry per app instance (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The server's metrics: requests, retrieval, LLM, generation slots, tokens, ingestion jobs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragserver_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "ragserver_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retrieval_latency = Histogram(
            "ragserver_retrieval_seconds", "Retrieval latency", ["mode"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.llm_latency = Histogram(
            "ragserver_llm_seconds", "LLM generation latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.llm_ttft = Histogram(
            "ragserver_llm_time_to_first_token_seconds",
            "LLM time to first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generations_active = Gauge(
            "ragserver_generations_active", "Chat answers being generated now", registry=r
        )
        self.generations_waiting = Gauge(
            "ragserver_generations_waiting", "Chat requests waiting for a generation slot", registry=r
        )
        self.generations_rejected = Counter(
            "ragserver_generations_rejected_total", "Chat requests refused: every slot taken", registry=r
        )
        self.chat_aborted = Counter(
            "ragserver_chat_aborted_total",
            "Chat requests ended before their answer: client gone, deadline passed",
            ["reason"],
            registry=r,
        )
        self.history_failures = Counter(
            "ragserver_history_failures_total", "History store reads/writes that failed", ["op"], registry=r
        )
        self.tokens = Counter("ragserver_llm_tokens_total", "LLM tokens", ["kind"], registry=r)
        self.jobs = Counter("ragserver_ingest_jobs_total", "Ingestion jobs finished", ["status"], registry=r)
        self.documents = Counter(
            "ragserver_ingest_documents_total", "Documents processed by ingestion", ["status"], registry=r
        )
        self.rate_limited = Counter(
            "ragserver_rate_limited_total", "Requests refused by a key's rate limit", ["limit"], registry=r
        )
        self.rate_limit_errors = Counter(
            "ragserver_rate_limit_errors_total", "Rate limit checks the counter store failed", registry=r
        )
        self.auth_failures = Counter(
            "ragserver_auth_failures_total",
            "Requests refused: no key, a bad key, too low a role",
            ["status"],
            registry=r,
        )
        self.audit_failures = Counter(
            "ragserver_audit_failures_total", "Audit entries that could not be written", registry=r
        )
        self.grounding = Histogram(
            "ragserver_answer_grounding_score",
            "Share of an answer's numbers, dates and names found in its cited sources (answers stating any)",
            buckets=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=r,
        )
        self.unsupported_facts = Counter(
            "ragserver_answer_unsupported_facts_total",
            "Numbers, dates and names in answers that their cited sources do not contain",
            registry=r,
        )
        self.capped_answers = Counter(
            "ragserver_answers_capped_total", "Answers cut at max_tokens (finish_reason length)", registry=r
        )
        self.answers = Counter(
            "ragserver_answers_total",
            "Answers by outcome (answered, abstained, refused, error)",
            ["outcome", "prompt", "model"],
            registry=r,
        )
        self.retrieval_top_score = Histogram(
            "ragserver_retrieval_top_score",
            "The best retrieval score shown to the model, per answer",
            ["collection"],
            buckets=(-5.0, -1.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.feedback = Counter(
            "ragserver_feedback_total",
            "Feedback received, by rating (none: a score or correction only)",
            ["rating"],
            registry=r,
        )
        self.engagement = Counter(
            "ragserver_engagement_events_total", "Engagement events on answers, by type", ["type"], registry=r
        )
        self.trace_failures = Counter(
            "ragserver_response_trace_failures_total", "Answers whose trace could not be stored", registry=r
        )
        self.judge_scores = Histogram(
            "ragserver_online_judge_score",
            "Online judge scores of sampled live answers",
            ["metric"],
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.judge_outcomes = Counter(
            "ragserver_online_judge_total",
            "Sampled answers by what the online judge did (scored, failed, dropped: too many pending)",
            ["outcome"],
            registry=r,
        )
        self.bm25_full_rebuilds = Counter(
            "ragserver_bm25_full_rebuilds_total",
            "BM25 indexes re-derived from every chunk of the vector store (a change should never need one)",
            registry=r,
        )
        self.bm25_feed_lag = Gauge(
            "ragserver_bm25_feed_lag_seconds",
            "Age of the last BM25 change-feed entry this process applied, when it applied it",
            registry=r,
        )
        self.experiment_assignments = Counter(
            "ragserver_experiment_assignments_total",
            "Chat requests enrolled in an experiment, by experiment and arm",
            ["experiment", "arm"],
            registry=r,
        )
        self.experiment_arms_stopped = Counter(
            "ragserver_experiment_arms_stopped_total",
            "Experiment arms stopped by a guardrail (their traffic goes to control)",
            ["experiment", "arm"],
            registry=r,
        )
        self.route_decisions = Counter(
            "ragserver_route_decisions_total",
            "Chat requests by the routing chain stage that decided them (rule, curated, llm) and its id",
            ["stage", "route"],
            registry=r,
        )
        self.route_stage_seconds = Histogram(
            "ragserver_route_stage_seconds",
            "Time one routing stage took",
            ["stage"],
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.condense = Counter(
            "ragserver_condense_total",
            "Follow-up search queries: the model's rewrite, or the deterministic fallback",
            ["outcome"],
            registry=r,
        )
