"""OpenTelemetry spans around the steps of a use case (opentelemetry-api only: without an SDK
configured every span is a no-op costing a few microseconds). The gRPC edge opens the call's
span (``broker.rpc.tracing``) with the parent from the caller's ``traceparent``; the steps here
are its children: ``policy``, ``sign``, ``store``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from opentelemetry import trace

T = TypeVar("T")
P = ParamSpec("P")

tracer = trace.get_tracer("broker")


async def traced(name: str, step: Awaitable[T]) -> T:
    """Await ``step`` inside a child span ``name`` of the current one."""
    with tracer.start_as_current_span(name):
        return await step


def traced_call(name: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn`` inside a child span ``name`` of the current one."""
    with tracer.start_as_current_span(name):
        return fn(*args, **kwargs)
