"""OpenTelemetry traces, opt-in (`RAGSERVER_OTEL__ENABLED=true`; the exporter reads the standard
`OTEL_EXPORTER_OTLP_*` variables: endpoint, headers, protocol).

Spans: `retrieval` (collection, mode, top_k, hits), `embeddings` (the query embedding), `chat <model>`
(the answer's LLM call) and `condense <model>` (a follow-up's rewrite), with the OpenTelemetry GenAI
semantic-convention attributes (`gen_ai.operation.name`, `gen_ai.provider.name`,
`gen_ai.request.model`, `gen_ai.request.max_tokens`, `gen_ai.request.temperature`,
`gen_ai.response.model`, `gen_ai.response.finish_reasons`, `gen_ai.usage.input_tokens`,
`gen_ai.usage.output_tokens`). Off, the API's no-op tracer costs next to nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from app.llm.base import Usage
    from app.settings import Settings

log = logging.getLogger(__name__)

TRACER_NAME = "ragserver"
_configured: TracerProvider | None = None


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def setup_tracing(settings: Settings, *, exporter: Any = None) -> TracerProvider | None:
    """Install a tracer provider exporting over OTLP (or to `exporter`, for tests) when enabled; once
    per process (OpenTelemetry allows one global provider)."""
    global _configured
    if not settings.otel.enabled:
        return None
    if _configured is not None:
        return _configured
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel.service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = provider
    log.info("OpenTelemetry tracing on (service %s)", settings.otel.service_name)
    return provider


def llm_request_attributes(
    operation: str, provider: str, model: str, max_tokens: int, temperature: float
) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.request.temperature": temperature,
    }


def llm_response_attributes(model: str, finish_reason: str | None, usage: Usage) -> dict[str, Any]:
    return {
        "gen_ai.response.model": model,
        "gen_ai.response.finish_reasons": [finish_reason or "stop"],
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }
