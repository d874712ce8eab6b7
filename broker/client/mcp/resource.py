"""What an MCP client without a usable credential is told, by ToolGuard and ``broker guard``
alike: the MCP authorization spec's HTTP 401 (RFC 6750 ``WWW-Authenticate: Bearer`` with
RFC 9728 ``resource_metadata``) whose JSON body is also a JSON-RPC error naming the reason
(``CREDENTIAL_REJECTED``, ``data.reason``), so that SDK clients that only show the body (the
TypeScript SDK says "Authentication required") or parse it (the Python SDK 2.x surfaces a
JSON-RPC error body) tell their user why.

The RFC 9728 document names the resource and the header bearer method and lists NO
``authorization_servers``: broker credentials are not obtained by an OAuth flow (they come from
the broker's AgentService.RequestCredential, one per tool call, over mutual TLS), and the
broker's gRPC port is not an OAuth authorization server a client could talk to.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from broker.client.mcp.wire import CREDENTIAL_REJECTED, DOMAIN

_UNSAFE = re.compile(r'[^ -~]|["\\]')
CREDENTIAL_HELP = (
    "a broker credential for this server, minted for one tool call by the broker's "
    "AgentService.RequestCredential (docs/mcp.md, docs/guard.md)"
)


def metadata_url(resource_url: str) -> str:
    """RFC 9728 section 3.1: the well-known path inserted before the resource's path."""
    parts = urlsplit(resource_url)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path}"


def metadata_path(resource_url: str) -> str:
    return urlsplit(metadata_url(resource_url)).path


def metadata_document(resource_url: str, name: str) -> dict[str, Any]:
    return {
        "resource": resource_url,
        "resource_name": name,
        "bearer_methods_supported": ["header"],
        "broker_credentials": CREDENTIAL_HELP,
    }


def challenge(resource_url: str, description: str, *, invalid: bool) -> bytes:
    """``WWW-Authenticate`` of a 401 (RFC 6750 section 3, RFC 9728 section 5.1).
    ``invalid``: a credential was presented and refused (``error="invalid_token"``)."""
    said = _UNSAFE.sub("?", description)[:300]
    error = 'error="invalid_token", ' if invalid else ""
    return (
        f'Bearer {error}error_description="{said}", '
        f'resource_metadata="{metadata_url(resource_url)}"'
    ).encode("latin-1")


def unauthorized_body(id_: Any, reason: str, message: str, resource_url: str) -> dict[str, Any]:
    """The JSON-RPC error body of a 401."""
    return {
        "jsonrpc": "2.0",
        "id": id_,
        "error": {
            "code": CREDENTIAL_REJECTED,
            "message": f"{reason}: {message}",
            "data": {
                "domain": DOMAIN,
                "reason": reason,
                "resource_metadata": metadata_url(resource_url),
            },
        },
    }
