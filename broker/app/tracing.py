"""OpenTelemetry spans around the steps of a use case (opentelemetry-api only). Without an SDK
configured (no tracer provider set) no span is even started: a no-op span still cost ~6 us,
and a mint has several. The gRPC edge opens the call's
span (``broker.rpc.tracing``) with the parent from the caller's ``traceparent``; the steps here
are its children: ``policy``, ``sign``, ``store``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from opentelemetry import trace

T = TypeVar("T")
P = ParamSpec("P")

tracer = trace.get_tracer("broker")
_OFF = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def tracing_enabled() -> bool:
    """Whether a tracer provider (an SDK) is installed; checked per call (~1 us), so that one
    installed after start-up (tests, auto-instrumentation) is honoured."""
    return not isinstance(trace.get_tracer_provider(), _OFF)


async def traced(name: str, step: Awaitable[T]) -> T:
    """Await ``step`` inside a child span ``name`` of the current one."""
    if not tracing_enabled():
        return await step
    with tracer.start_as_current_span(name):
        return await step


def traced_call(name: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn`` inside a child span ``name`` of the current one."""
    if not tracing_enabled():
        return fn(*args, **kwargs)
    with tracer.start_as_current_span(name):
        return fn(*args, **kwargs)
