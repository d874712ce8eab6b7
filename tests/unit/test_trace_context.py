"""W3C trace context through MCP _meta and gRPC metadata (broker.client.trace_context)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from broker.client.trace_context import extract_meta, grpc_metadata, inject_meta

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_meta_round_trip() -> None:
    ctx = extract_meta({"traceparent": TRACEPARENT, "progressToken": 3})
    span = trace.get_current_span(ctx).get_span_context()
    assert format(span.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inject_meta({"progressToken": 3}, ctx) == {
        "progressToken": 3,
        "traceparent": TRACEPARENT,
    }
    assert grpc_metadata(ctx) == (("traceparent", TRACEPARENT),)


def test_malformed_or_absent_context_is_no_context() -> None:
    for meta in (None, {}, {"traceparent": "nonsense"}, {"traceparent": 42}):
        ctx = extract_meta(meta)
        assert not trace.get_current_span(ctx).get_span_context().is_valid
        assert inject_meta(None, ctx) == {}
        assert grpc_metadata(ctx) == ()


def test_the_current_span_is_injected() -> None:
    span = NonRecordingSpan(
        SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )
    with trace.use_span(span):
        (pair,) = grpc_metadata()
    assert pair == ("traceparent", f"00-{0x1234:032x}-{0x5678:016x}-01")
