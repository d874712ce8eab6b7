"""Peer identity from the mTLS client certificate, and which service each identity may call.

The TLS handshake (gRPC core) has already checked the chain against the trust bundle, the
validity period and the key possession. Here the leaf is checked as an X.509-SVID
(``broker.core.spiffe.validate_svid``) and its SPIFFE ID decides the service (API.md):

    /broker.v1.AgentService/*     spiffe://TD/agent/...
    /broker.v1.VerifierService/*  spiffe://TD/mcp/...
    /broker.v1.AdminService/*     spiffe://TD/operator/...
    health and reflection         any valid SVID of the trust domain

Handlers read the caller with ``current_peer()``.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from broker.core.audit.record import MAX_ID_CHARS, AuditEvent, AuditEventName
from broker.core.audit.scrub import looks_like_secret
from broker.core.errors import BrokerError, InvalidRequest, InvalidSvid, PermissionDenied, Reason
from broker.core.spiffe import PeerIdentity, Role, identity_from_pem
from broker.rpc.status import status_of

SERVICE_ROLES: dict[str, Role] = {
    "/broker.v1.AgentService/": Role.AGENT,
    "/broker.v1.VerifierService/": Role.MCP,
    "/broker.v1.AdminService/": Role.OPERATOR,
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

log = logging.getLogger("broker.rpc")
_PEER: contextvars.ContextVar[PeerIdentity] = contextvars.ContextVar("broker_peer")


def current_peer() -> PeerIdentity:
    """The authenticated caller of the current RPC (set by the interceptor)."""
    return _PEER.get()


def required_role(method: str) -> Role | None:
    for prefix, role in SERVICE_ROLES.items():
        if method.startswith(prefix):
            return role
    return None


def authorize(method: str, peer: PeerIdentity) -> None:
    role = required_role(method)
    if role is None:
        if method.startswith(OPEN_PREFIXES):
            return
        raise PermissionDenied(f"{peer.spiffe_id} may not call {method}", Reason.ROLE_NOT_ALLOWED)
    if peer.role is not role:
        raise PermissionDenied(
            f"{peer.spiffe_id} may not call {method.split('/')[1]}: "
            f"it is for spiffe://{peer.spiffe_id.trust_domain}/{role.value}/... identities",
            Reason.ROLE_NOT_ALLOWED,
        )


def peer_of(context: grpc.aio.ServicerContext, trust_domain: str) -> PeerIdentity:
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if not pems:
        raise InvalidSvid("no client certificate: mutual TLS is required")
    peer = identity_from_pem(pems[0], trust_domain)
    # The caller's SPIFFE ID is written in audit records (actor): validated once, here, so that
    # no call can get as far as a stored change whose audit record would then be refused.
    spiffe_id = str(peer.spiffe_id)
    if len(spiffe_id) > MAX_ID_CHARS:
        raise InvalidSvid(
            f"the SPIFFE ID of the client certificate is {len(spiffe_id)} characters long; "
            f"the broker accepts up to {MAX_ID_CHARS}"
        )
    if looks_like_secret(spiffe_id):
        raise InvalidSvid(
            "the SPIFFE ID of the client certificate looks like a credential (a JWT or a "
            "bearer value); use a plain workload path"
        )
    return peer


class _Malformed:
    """What a request that does not parse as its message becomes (instead of gRPC's UNKNOWN
    without a reason): the handler answers INVALID_ARGUMENT, INVALID_REQUEST naming it."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's bad input
            return _Malformed(type(exc).__name__)

    return parse


async def _refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, _Malformed):
        status = status_of(
            InvalidRequest("request", "is not a valid protobuf message for this method")
        )
        await context.abort(status.code, status.details, status.trailing_metadata)


def _refusal_event(
    trust_domain: str, method: str, peer: PeerIdentity | None, exc: BrokerError, now: float
) -> AuditEvent:
    """``rpc.refused``: the caller when it had a valid identity, else the broker itself (the
    certificate's SPIFFE ID is not something a record can carry: that is why it was refused)."""
    actor = str(peer.spiffe_id) if peer is not None else f"spiffe://{trust_domain}/broker"
    return AuditEvent(
        event=AuditEventName.RPC_REFUSED,
        time=now,
        actor=actor,
        outcome="refused",
        reason=exc.reason.value,
        extra={"method": method, "message": exc.message},
    )


class IdentityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call from its client certificate and enforces the role table."""

    def __init__(
        self,
        trust_domain: str,
        audit: Callable[[AuditEvent], object] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._trust_domain = trust_domain
        self._audit = audit  # every refusal leaves a record (rpc.refused)
        self._now = now

    def _record(self, method: str, peer: PeerIdentity | None, exc: BrokerError) -> None:
        if self._audit is None:
            return
        try:
            self._audit(_refusal_event(self._trust_domain, method, peer, exc, self._now()))
        except Exception:  # a refusal stands even if its record fails
            log.exception("could not record a refused call")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        td = self._trust_domain

        async def check(context: grpc.aio.ServicerContext) -> PeerIdentity | None:
            peer = None
            try:
                peer = peer_of(context, td)
                authorize(method, peer)
            except BrokerError as exc:
                self._record(method, peer, exc)
                status = status_of(exc)
                await context.abort(status.code, status.details, status.trailing_metadata)
                return None
            _PEER.set(peer)
            return peer

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                await _refuse_malformed(request, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                await check(context)
                await _refuse_malformed(request, context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # reflection
            inner_ss = handler.stream_stream

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                await check(context)
                async for item in inner_ss(requests, context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # pragma: no cover - the broker serves no client-streaming RPC
