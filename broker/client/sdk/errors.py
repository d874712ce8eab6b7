"""Typed errors on the client side, rebuilt from the broker's statuses.

Every broker error carries a ``google.rpc.ErrorInfo`` (domain ``broker.v1``) whose reason is one
of ``broker.core.errors.Reason``; it comes back here as the same ``broker.core.errors`` class the
broker raised (``Unauthenticated``, ``PermissionDenied`` with its policy ids, ``InvalidRequest``
naming the field, ...). Two more, for what only a client sees:

    BrokerError
    ├── FailedPrecondition
    │   └── ApprovalPending     RequestCredential answered with a pending approval
    └── BrokerUnavailable       the broker could not be reached or answered without a reason
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.core.errors import (
    BrokerError,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Reason,
    StoreUnavailable,
    Unauthenticated,
)

DOMAIN = "broker.v1"

_CLASS_OF_STATUS: dict[grpc.StatusCode, type[BrokerError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: QuotaExceeded,
    grpc.StatusCode.UNAVAILABLE: StoreUnavailable,
}


class ApprovalPending(FailedPrecondition):
    """The call needs an operator's approval; retry with ``approval_id`` once it is decided."""

    default_reason = Reason.APPROVAL_REQUIRED

    def __init__(self, message: str, approval_id: str, expires_at: float) -> None:
        super().__init__(message)
        self.approval_id = approval_id
        self.expires_at = expires_at


class BrokerUnavailable(BrokerError):
    """The broker did not answer (down, unreachable, TLS refused, deadline) or answered with an
    error that is not one of its own. Fail closed."""

    default_reason = Reason.INTERNAL


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # trailers inconsistent with the status: not the broker's
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == DOMAIN:
            return info
    return None


def error_from_rpc(err: grpc.aio.AioRpcError, *, what: str = "broker call") -> BrokerError:
    """The ``broker.core.errors`` exception a failed call stands for."""
    info = _error_info(err)
    details = err.details() or ""
    if info is None:
        return BrokerUnavailable(f"{what} failed: {err.code().name}: {details}")
    try:
        reason = Reason(info.reason)
    except ValueError:
        return BrokerUnavailable(f"{what} failed with unknown reason {info.reason!r}: {details}")
    message = details.removeprefix(f"{info.reason}: ")
    if reason is Reason.INVALID_REQUEST:
        field = info.metadata.get("field", "request")
        return InvalidRequest(field, message.removeprefix(f"{field}: "))
    if reason is Reason.INTERNAL:
        return BrokerUnavailable(message, Reason.INTERNAL)
    cls = _CLASS_OF_STATUS.get(err.code(), BrokerError)
    if cls is PermissionDenied:
        ids = tuple(p for p in info.metadata.get("policy_ids", "").split(",") if p)
        return PermissionDenied(message, reason, policy_ids=ids)
    return cls(message, reason)
