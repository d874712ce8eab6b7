"""The one table mapping error kinds to gRPC status codes, and the abort helper.

Every error reaches the client with a status message that begins with its reason code and a
``google.rpc.ErrorInfo`` (domain ``broker.v1``) in the status details. Unknown errors become
INTERNAL with a fixed message and a correlation id; the detail is logged server-side only.
"""

from __future__ import annotations

import logging
import secrets
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker.core.errors import (
    BrokerError,
    ConfigError,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Reason,
    StoreUnavailable,
    Unauthenticated,
    VaultUnavailable,
)

DOMAIN = "broker.v1"
log = logging.getLogger("broker.rpc")

STATUS_OF: dict[type[BrokerError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    VaultUnavailable: grpc.StatusCode.UNAVAILABLE,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code_of(err: BrokerError) -> grpc.StatusCode:
    for cls in type(err).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def to_status(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=code.value[0], message=f"{reason}: {message}", details=[detail])
    return rpc_status.to_status(proto)


def status_of(exc: BaseException) -> grpc.Status:
    """The client-facing status for any exception (logging the unexpected ones)."""
    if isinstance(exc, BrokerError):
        meta = {}
        if isinstance(exc, InvalidRequest):
            meta["field"] = exc.field
        if isinstance(exc, PermissionDenied) and exc.policy_ids:
            meta["policy_ids"] = ",".join(exc.policy_ids)
        return to_status(status_code_of(exc), exc.reason.value, exc.message, meta)
    correlation = secrets.token_hex(8)
    log.error(
        "internal error (correlation id %s)",
        correlation,
        exc_info=exc,
        extra={"correlation_id": correlation},
    )
    return to_status(
        grpc.StatusCode.INTERNAL,
        Reason.INTERNAL.value,
        f"internal error; correlation id {correlation} (details in the broker log)",
        {"correlation_id": correlation},
    )


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    status = status_of(exc)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
