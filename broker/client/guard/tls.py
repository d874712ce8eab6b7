"""HTTPS for the guard: the server side of mutual TLS with uvicorn, and the client certificate
handed to the app.

The guard serves with its own X.509-SVID and asks for (does not require) a client certificate
from the trust bundle: an agent presents its SVID (the gateway does), a plain MCP client may
present none and authenticate with a credential. uvicorn does not put the peer certificate in
the ASGI scope, so ``PeerCertH11Protocol`` copies its DER into ``scope["state"]`` (uvicorn
copies the app state into every request's scope) under ``PEER_CERT_KEY``, once per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from broker.client.guard.app import PEER_CERT_KEY


class PeerCertH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # no delayed-ACK stalls on kept-alive connections (docs/mcp.md, "Measured")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app_state = {**self.app_state, PEER_CERT_KEY: der}


def server_ssl_options(cert: Path, key: Path, ca: Path) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for HTTPS with optional client certificates."""
    return {
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "ssl_ca_certs": str(ca),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
    }
