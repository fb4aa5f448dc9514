"""Tracing is off (and costs nothing) without an OTLP endpoint; a missing extra names `otel`."""

from __future__ import annotations

import sys

import pytest

from app import tracing
from app.extras import MissingExtra


def test_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure("gateway") is False
    assert not tracing.enabled()
    headers: dict[str, str] = {}
    with tracing.span("search.embed", batched=True):
        tracing.inject(headers)
    assert headers == {}  # no traceparent sent
    assert (
        tracing.server_span("POST", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        is None
    )


def test_an_endpoint_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    # as if opentelemetry-exporter-otlp-proto-http were not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(MissingExtra) as raised:
        tracing.configure("embedder")
    assert raised.value.extra == "otel"
    assert "semsearch[otel]" in str(raised.value)
    assert not tracing.enabled()
