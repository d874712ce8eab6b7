"""W3C trace context (https://www.w3.org/TR/trace-context/) across the hops of a tool call:
MCP ``_meta`` (assistant -> guard or gateway -> MCP server) and gRPC metadata (-> the broker),
so that one trace follows a tool call end to end. OpenTelemetry API only (a no-op without an
SDK); the guard and the gateway call these three functions.

    ctx = extract_meta(request.params.meta)      # the caller's context, from _meta
    with tracer.start_as_current_span("tools/call", context=ctx): ...
    meta = inject_meta(dict(meta or {}))         # ... and on to the next hop
    await stub.RequestCredential(req, metadata=grpc_metadata())
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()


def extract_meta(meta: Mapping[str, Any] | None) -> Context:
    """The trace context carried by an MCP ``_meta`` (keys ``traceparent``/``tracestate``);
    an empty context when there is none or it is malformed (never an error)."""
    carrier = {k: v for k in HEADERS if isinstance(v := (meta or {}).get(k), str)}
    return _PROPAGATOR.extract(carrier)


def inject_meta(
    meta: dict[str, Any] | None = None, context: Context | None = None
) -> dict[str, Any]:
    """``meta`` with the current (or ``context``'s) span as ``traceparent``/``tracestate``.
    Nothing is added when there is no valid span."""
    out = dict(meta or {})
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    out.update(carrier)
    return out


def grpc_metadata(context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """The current (or ``context``'s) span as gRPC metadata for a call to the broker."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return tuple((k, v) for k, v in carrier.items() if k in HEADERS)
