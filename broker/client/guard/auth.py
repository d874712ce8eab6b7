"""Who is calling the guard: an agent's X.509-SVID presented over mutual TLS (verified against
the trust bundle by TLS, then as an SVID of this trust domain), a broker credential for this
server (``Authorization: Bearer``), or both. A caller with neither gets the 401 of
``broker.client.mcp.resource``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from broker.core.errors import BrokerError
from broker.core.spiffe import PeerIdentity, Role, identity_from_der


@dataclass(frozen=True)
class Caller:
    """What a request presented. ``peer``: the client certificate's identity when one was
    presented; ``token``: the Bearer credential; ``cert_problem``: why a presented certificate
    is not an acceptable SVID."""

    token: str | None
    peer: PeerIdentity | None
    cert_sha256: str | None
    cert_problem: str | None = None

    @property
    def agent(self) -> bool:
        return self.peer is not None and self.peer.role is Role.AGENT


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def caller_of(
    headers: list[tuple[bytes, bytes]], peer_der: bytes | None, trust_domain: str
) -> Caller:
    token = bearer(headers)
    if peer_der is None:
        return Caller(token, None, None)
    cert_sha256 = hashlib.sha256(peer_der).hexdigest()
    try:
        peer = identity_from_der(peer_der, trust_domain)
    except BrokerError as exc:
        return Caller(token, None, cert_sha256, cert_problem=exc.message)
    return Caller(token, peer, cert_sha256)
