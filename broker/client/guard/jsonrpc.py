"""JSON-RPC 2.0 (https://www.jsonrpc.org/specification) as MCP carries it, for the guard: parse
one message, classify it, build errors. Pure: no I/O.

MCP's two live protocol revisions differ in how a client starts, not in the messages a tool call
is made of: 2025-11-25 opens with ``initialize`` and a session (``Mcp-Session-Id``); 2026-07-28
is stateless (``server/discover``, no initialize, the client's protocol version and capabilities
in each request's ``params._meta``). ``era_of`` tells them apart per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
CREDENTIAL_REJECTED: Final = -32001  # broker.client.mcp.wire: the call's credential was refused
UPSTREAM_UNAVAILABLE: Final = -32003  # the server behind the guard is down or restarting
REFUSED: Final = -32004  # the guard refuses the request (not a credential problem): data.reason

HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS: Final = ("2026-07-28",)
LATEST_HANDSHAKE: Final = HANDSHAKE_VERSIONS[-1]
LATEST_MODERN: Final = MODERN_VERSIONS[-1]
META_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
DOMAIN: Final = "broker.v1"

# What a caller may do once authenticated (no per-call credential needed).
SESSION_METHODS: Final = frozenset(
    {"initialize", "server/discover", "ping", "tools/list", "logging/setLevel"}
)
RESOURCE_METHODS: Final = frozenset(
    {
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
    }
)
PROMPT_METHODS: Final = frozenset({"prompts/list", "prompts/get"})


class ProtocolError(Exception):
    """A message the guard cannot accept; becomes a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message. ``id`` is None for a notification; responses have no method."""

    raw: dict[str, Any]

    @property
    def id(self) -> Any:
        return self.raw.get("id")

    @property
    def method(self) -> str | None:
        method = self.raw.get("method")
        return method if isinstance(method, str) else None

    @property
    def params(self) -> dict[str, Any]:
        params = self.raw.get("params")
        return params if isinstance(params, dict) else {}

    @property
    def is_request(self) -> bool:
        return self.method is not None and "id" in self.raw

    @property
    def is_notification(self) -> bool:
        return self.method is not None and "id" not in self.raw

    @property
    def is_response(self) -> bool:
        return self.method is None and ("result" in self.raw or "error" in self.raw)


def parse(body: bytes) -> Message:
    """One JSON-RPC message from an HTTP body. Batches were removed from MCP in 2025-06-18."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError(PARSE_ERROR, "the body is not JSON") from None
    if isinstance(value, list):
        raise ProtocolError(INVALID_REQUEST, "JSON-RPC batches are not accepted (MCP 2025-06-18+)")
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, 'not a JSON-RPC 2.0 message ("jsonrpc": "2.0")')
    if "method" in value and not isinstance(value["method"], str):
        raise ProtocolError(INVALID_REQUEST, "method must be a string")
    if ("id" in value and not isinstance(value["id"], str | int)) or isinstance(
        value.get("id"), bool
    ):
        raise ProtocolError(INVALID_REQUEST, "id must be a string or an integer")
    if "params" in value and not isinstance(value["params"], dict):
        raise ProtocolError(INVALID_PARAMS, "params must be an object")
    message = Message(value)
    if not (message.is_request or message.is_notification or message.is_response):
        raise ProtocolError(INVALID_REQUEST, "neither a request, a notification nor a response")
    return message


def era_of(message: Message, header_version: str | None) -> str:
    """The protocol revision a request speaks: the modern stateless one when it says so
    (``server/discover``, the ``MCP-Protocol-Version`` header, or ``_meta``), else handshake."""
    meta = message.params.get("_meta")
    meta_version = meta.get(META_VERSION) if isinstance(meta, dict) else None
    for version in (meta_version, header_version):
        if version in MODERN_VERSIONS:
            return str(version)
    if message.method == "server/discover":
        return LATEST_MODERN
    if message.method == "initialize":
        return negotiate(message.params.get("protocolVersion"))
    return header_version if header_version in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE


def negotiate(offered: Any) -> str:
    """The handshake version to answer an ``initialize`` with (the client's if we speak it)."""
    return offered if offered in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE


def is_modern(version: str) -> bool:
    return version in MODERN_VERSIONS


_CACHED = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/read", "resources/templates/list"}
)


def modernize(method: str, value: dict[str, Any]) -> dict[str, Any]:
    """A result as 2026-07-28 wants it: ``resultType`` on every result, ``ttlMs`` and
    ``cacheScope`` on cacheable ones (never cached: the guard decides per request)."""
    out = {"resultType": "complete", **value}
    if method in _CACHED:
        out.setdefault("ttlMs", 0)
        out.setdefault("cacheScope", "private")
    return out


def result(id_: Any, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


def error(id_: Any, code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def refusal(id_: Any, code: int, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    """An error whose message begins with the reason code and whose data names it."""
    return error(id_, code, f"{reason}: {message}", {"domain": DOMAIN, "reason": reason, **extra})


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
