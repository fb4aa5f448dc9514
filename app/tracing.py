"""OpenTelemetry traces: a span per request a service answers and per search stage, joined
across processes by the W3C `traceparent` header the HTTP model clients send.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then
the process exports over OTLP/HTTP (the `otel` extra) and the standard `OTEL_*` variables
(service name, sampler, headers, batch delay) apply. Off, every helper here returns at once
and nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from app.extras import require
from app.models.timing import RequestTiming, request_timing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Span, Tracer

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_tracer: Tracer | None = None


def configure(service: str) -> bool:
    """Export this process's spans over OTLP when the environment names an endpoint (the
    edges call this once, at start). Returns whether tracing is on.

    Raises:
        MissingExtra: an endpoint is set but the `otel` extra is not installed.
    """
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    feature = "tracing (OTEL_EXPORTER_OTLP_ENDPOINT is set)"
    require("opentelemetry.sdk.trace", "otel", feature)
    otlp = require("opentelemetry.exporter.otlp.proto.http.trace_exporter", "otel", feature)
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The batch processor exports from a thread of its own: a slow or absent collector costs
    # requests nothing, and what it cannot take is dropped (and logged by OpenTelemetry).
    enable(service, BatchSpanProcessor(otlp.OTLPSpanExporter()))
    return True


def enable(service: str, processor: SpanProcessor) -> None:
    """Trace this process into `processor` (tests pass an in-memory exporter's)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    global _tracer
    # OTEL_SERVICE_NAME, when set, names the process (Resource.create reads it).
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"semsearch-{service}"}
    provider = TracerProvider(resource=Resource.create(named))  # flushes at exit
    provider.add_span_processor(processor)
    _tracer = provider.get_tracer("semsearch")


def disable() -> None:
    """Stop tracing (tests)."""
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


@contextmanager
def span(name: str, *, batched: bool = False) -> Iterator[None]:
    """A span around the block, a child of the current one. `batched`: the block waits on a
    model's batch queue in this process; its queue and compute time become attributes."""
    if _tracer is None:
        yield
        return
    timing = request_timing.get() if batched else None
    before = (timing.queue_s, timing.compute_s) if timing is not None else (0.0, 0.0)
    with _tracer.start_as_current_span(name) as current:
        try:
            yield
        finally:
            if timing is not None:
                _record_batches(current, timing, before)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add `traceparent` (W3C trace context) for the current span to outgoing headers."""
    if _tracer is None:
        return
    from opentelemetry.propagate import inject as add_context

    add_context(headers)


class ServerSpan:
    """The span of one request a service answers: a child of the caller's `traceparent`, the
    current span while the request is handled."""

    def __init__(self, tracer: Tracer, method: str, headers: Mapping[str, str]) -> None:
        from opentelemetry import context
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, set_span_in_context

        self._method = method
        self._span = tracer.start_span(method, context=extract(dict(headers)), kind=SpanKind.SERVER)
        self._span.set_attribute("http.request.method", method)
        self._token = context.attach(set_span_in_context(self._span))

    def end(self, route: str, status: int, timing: RequestTiming) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        self._span.update_name(f"{self._method} {route}")
        self._span.set_attribute("http.route", route)
        self._span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self._span.set_status(Status(StatusCode.ERROR))
        _record_batches(self._span, timing, (0.0, 0.0))
        context.detach(self._token)
        self._span.end()


def server_span(method: str, headers: Mapping[str, str]) -> ServerSpan | None:
    """Start the span of a request (None while tracing is off)."""
    return None if _tracer is None else ServerSpan(_tracer, method, headers)


def _record_batches(current: Span, timing: RequestTiming, before: tuple[float, float]) -> None:
    """The batch queue's share of a span: how long its items waited, and computed."""
    queue_s, compute_s = timing.queue_s - before[0], timing.compute_s - before[1]
    if queue_s or compute_s:
        current.set_attribute("semsearch.batch.queue_ms", round(queue_s * 1000, 3))
        current.set_attribute("semsearch.batch.compute_ms", round(compute_s * 1000, 3))
