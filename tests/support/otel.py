"""The OpenTelemetry SDK with an in-memory exporter, for tests that look at spans.

OpenTelemetry allows one global tracer provider per process: it is installed once, and its
processor keeps spans only while a test that asked for them runs (``spans`` fixture), so that
other tests never fill the exporter. A pytest plugin of the suite (tests/conftest.py): ask for
the ``spans`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_EXPORTER = InMemorySpanExporter()


class _Gated(SimpleSpanProcessor):
    recording = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.recording:
            super().on_end(span)


_PROCESSOR = _Gated(_EXPORTER)


@pytest.fixture(scope="session")
def otel_exporter() -> InMemorySpanExporter:
    """The SDK, installed once for the process."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    return _EXPORTER


@pytest.fixture
def spans(otel_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """The spans that end while the test runs."""
    otel_exporter.clear()
    _PROCESSOR.recording = True
    try:
        yield otel_exporter
    finally:
        _PROCESSOR.recording = False
        otel_exporter.clear()
