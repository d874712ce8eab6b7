"""The broker's Prometheus metrics, counted at the gRPC edge by one server interceptor.

Names are a contract (../shared/API.md, "Metrics"); docs/operations.md says what to alert on:

    broker_credentials_total{outcome="granted|denied|pending", reason}   RequestCredential
    broker_verifications_total{outcome="accepted|rejected", reason}      VerifyCredential
    broker_revocations_total{kind="task|agent|server|tier|issued_before"} operator revokes
    broker_rpc_duration_seconds{method}    histogram of unary calls (streams are not timed)
    broker_rpcs_total{method, code}        every call by gRPC status code
    broker_store_errors_total              calls refused because the store was unreachable
    broker_live_tasks                      gauge, sampled from the store (``sample_live_tasks``)

``reason`` is the reason code every refusal carries (``broker.core.errors.Reason``: a bounded
set), "" for a grant or an acceptance. ``method`` is ``Service/Method`` (``AgentService/
RequestCredential``). Every worker process counts into prometheus-client's multiprocess files
(``broker.rpc.metrics_http``), so a scrape of the listener sums all of them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from broker.app.ports import Store
from broker.core.model import TaskState

CREDENTIALS = Counter("broker_credentials", "RequestCredential outcomes.", ["outcome", "reason"])
VERIFICATIONS = Counter("broker_verifications", "VerifyCredential outcomes.", ["outcome", "reason"])
REVOCATIONS = Counter("broker_revocations", "Operator revocations by kind.", ["kind"])
RPC_DURATION = Histogram(
    "broker_rpc_duration_seconds",
    "Duration of unary RPCs, as the server saw them.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RPCS = Counter("broker_rpcs", "RPCs by method and gRPC status code.", ["method", "code"])
STORE_ERRORS = Counter(
    "broker_store_errors", "Calls that failed because the state store was unreachable."
)
LIVE_TASKS = Gauge(
    "broker_live_tasks", "Live (active) tasks in the store.", multiprocess_mode="livemostrecent"
)

_REVOKE_KIND = {
    "AdminService/RevokeTask": "task",
    "AdminService/RevokeAgent": "agent",
    "AdminService/RevokeServer": "server",
    "AdminService/RevokeTier": "tier",
    "AdminService/RevokeIssuedBefore": "issued_before",
}
LIVE_TASKS_LIMIT = 100_000  # a sample counts at most this many live tasks


def method_label(full: str) -> str:
    """``/broker.v1.AgentService/RequestCredential`` -> ``AgentService/RequestCredential``."""
    service, _, method = full.lstrip("/").partition("/")
    return f"{service.rpartition('.')[2]}/{method}"


def reason_of(details: str | bytes | None) -> str:
    """The reason code at the start of a status message (``POLICY_DENIED: ...``), or ""."""
    text = details.decode(errors="replace") if isinstance(details, bytes) else details or ""
    head, sep, _ = text.partition(":")
    return head if sep and head.isupper() and head.replace("_", "").isalnum() else ""


def record(method: str, code: grpc.StatusCode, reason: str, request: Any, response: Any) -> None:
    """Count one finished call (the outcome counters read its request and response)."""
    RPCS.labels(method, code.name).inc()
    if reason == "STORE_UNAVAILABLE":
        STORE_ERRORS.inc()
    ok = code is grpc.StatusCode.OK
    if method == "AgentService/RequestCredential":
        if not ok:
            CREDENTIALS.labels("denied", reason).inc()
        elif response is not None and response.HasField("pending_approval"):
            CREDENTIALS.labels("pending", "APPROVAL_REQUIRED").inc()
        else:
            CREDENTIALS.labels("granted", "").inc()
    elif method == "VerifierService/VerifyCredential":
        VERIFICATIONS.labels("accepted" if ok else "rejected", reason).inc()
    elif ok and method in _REVOKE_KIND and not getattr(request, "dry_run", False):
        REVOCATIONS.labels(_REVOKE_KIND[method]).inc()


def _status(context: grpc.aio.ServicerContext, failed: bool) -> tuple[grpc.StatusCode, str]:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
    if isinstance(code, int):  # grpc.aio may keep the numeric value
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return code, "" if code is grpc.StatusCode.OK else reason_of(context.details())


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Times and counts every call. Put it FIRST in the server's interceptors, so that calls
    refused by the identity interceptor (no or a wrong certificate) are counted too."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = method_label(details.method)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                response, failed = None, True
                try:
                    response = await inner_uu(request, context)
                    failed = False
                    return response
                finally:
                    RPC_DURATION.labels(method).observe(time.perf_counter() - started)
                    code, reason = _status(context, failed)
                    record(method, code, reason, request, response)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:  # feeds and tails: counted when they end
            inner_us = handler.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                failed = True
                try:
                    async for item in inner_us(request, context):
                        yield item
                    failed = False
                finally:
                    code, reason = _status(context, failed)
                    record(method, code, reason, request, None)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # reflection's stream-stream: not worth a series


async def sample_live_tasks(store: Store, now: float) -> int:
    """Set ``broker_live_tasks`` from the store (at most ``LIVE_TASKS_LIMIT``)."""
    live = await store.list_tasks(state=TaskState.ACTIVE, now=now, limit=LIVE_TASKS_LIMIT)
    LIVE_TASKS.set(len(live))
    return len(live)
