"""Distributed tracing: OpenTelemetry spans across every hop, W3C trace context between
processes, exported over OTLP/HTTP when the standard `OTEL_*` variables name a collector.

HTTP request (or WebSocket message) → queued job (the context travels in the job's
arguments) → worker step → LLM call → SQL statements and Redis commands: one trace. The
current trace id is bound to every log line (`trace_id`, `span_id`) and to error bodies.

Configuration is OpenTelemetry's own: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_SDK_DISABLED` mean what they mean
everywhere. Without an endpoint spans are still made (log lines carry trace ids) but go
nowhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Link, Span, SpanKind

TRACEPARENT = "_traceparent"  # the job argument that carries the trace context
_configured: TracerProvider | None = None

tracer = trace.get_tracer("apex")


def configure_tracing(service: str) -> TracerProvider | None:
    """Install this process's tracer provider once (`apex-serve`, `apex-worker`)."""
    global _configured
    if _configured is not None or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return _configured
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    exporting = bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    # Nowhere to send spans: record none (ids are still made, so logs carry trace ids).
    sampler = None if exporting or os.environ.get("OTEL_TRACES_SAMPLER") else ALWAYS_OFF
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500)
        )
    trace.set_tracer_provider(provider)
    _configured = provider
    return provider


def shutdown_tracing() -> None:
    """Export what is buffered (at the end of the process)."""
    if _configured is not None:
        _configured.force_flush(5000)


def add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the current trace and span ids on every line."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event.setdefault("trace_id", format(span.trace_id, "032x"))
        event.setdefault("span_id", format(span.span_id, "016x"))
    return event


def current_trace_id() -> str | None:
    span = trace.get_current_span().get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else None


def carrier() -> dict[str, str]:
    """The current context as W3C headers (`traceparent`), to send along."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    new_trace: bool = False,
) -> Iterator[Span]:
    """A span around a block; `parent` is a W3C carrier from another process. `new_trace`
    starts a trace of its own, linked to the current span (a message on a long-lived
    WebSocket is not part of the connection's trace). An exception marks the span as an
    error and goes on."""
    token = None
    if parent is not None:
        token = otel_context.attach(propagate.extract(dict(parent)))
    links, start_in = [], None
    if new_trace:
        enclosing = trace.get_current_span().get_span_context()
        links = [Link(enclosing)] if enclosing.is_valid else []
        start_in = otel_context.Context()
    try:
        clean = {key: value for key, value in (attributes or {}).items() if value is not None}
        with tracer.start_as_current_span(
            name, context=start_in, kind=kind, attributes=clean, links=links
        ) as current:
            yield current
    finally:
        if token is not None:
            otel_context.detach(token)
