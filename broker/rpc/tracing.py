"""One OpenTelemetry server span per unary RPC, child of the caller's W3C ``traceparent``
(https://www.w3.org/TR/trace-context/) when the gRPC metadata carries one, and the log context
(method, trace and span ids) of the call for JSON logs (``broker.adapters.logs``).

Span: name ``Service/Method`` (``AgentService/RequestCredential``), kind SERVER, attributes
``rpc.system=grpc``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` and, on a
refusal, the reason code as the span status description. The use case's steps are its children
(``broker.app.tracing``: policy, sign, store). Streams (the revocation feed, audit tail) are not
traced: they last as long as the subscriber. Without an OpenTelemetry SDK configured no span is
started (``broker.app.tracing.tracing_enabled``); docs/operations.md ("Traces") says how to
export them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker.adapters.logs import log_context
from broker.app.tracing import tracing_enabled
from broker.rpc.metrics import method_label, reason_of

log = logging.getLogger("broker.rpc.calls")
tracer = trace.get_tracer("broker")
_PROPAGATOR = TraceContextTextMapPropagator()
_HEADERS = ("traceparent", "tracestate")


def parent_of(context: grpc.aio.ServicerContext) -> Any:
    """The OpenTelemetry context of the caller's ``traceparent`` metadata (empty if none or
    malformed: a bad header starts a new trace, it never fails the call)."""
    carrier = {
        k: v if isinstance(v, str) else v.decode(errors="replace")
        for k, v in (context.invocation_metadata() or ())
        if k in _HEADERS
    }
    return _PROPAGATOR.extract(carrier) if carrier else None


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = method_label(details.method)
        service, _, name = method.partition("/")
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not tracing_enabled():  # no SDK: no span, the log context only
                with log_context(method=method):
                    started = time.perf_counter()
                    try:
                        return await inner(request, context)
                    finally:
                        _finish(None, context, method, time.perf_counter() - started)
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            with tracer.start_as_current_span(
                method,
                context=parent_of(context),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,  # refusals are outcomes, and messages may name ids
                set_status_on_exception=False,
            ) as span:
                ids = span.get_span_context()
                trace_id = format(ids.trace_id, "032x") if ids.is_valid else ""
                span_id = format(ids.span_id, "016x") if ids.is_valid else ""
                with log_context(method=method, trace_id=trace_id, span_id=span_id):
                    started = time.perf_counter()
                    try:
                        return await inner(request, context)
                    finally:
                        _finish(span, context, method, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _finish(
    span: trace.Span | None, context: grpc.aio.ServicerContext, method: str, elapsed: float
) -> None:
    code = context.code()
    value = code.value[0] if isinstance(code, grpc.StatusCode) else int(code or 0)
    reason = reason_of(context.details()) if value else ""
    if span is not None:
        span.set_attribute("rpc.grpc.status_code", value)
        if value != 0:
            span.set_status(Status(StatusCode.ERROR, reason or str(code)))
    if log.isEnabledFor(logging.DEBUG):  # the access log, at debug level
        log.debug("%s: status %d %s in %.2f ms", method, value, reason, elapsed * 1000)
