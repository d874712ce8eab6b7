"""What the gateway says on MCP, as plain JSON-RPC 2.0 dicts (no I/O).

Two protocol revisions are live, and clients pick one (https://modelcontextprotocol.io/specification):

- 2025-11-25 and older: ``initialize`` (the client proposes a version, the server answers the one
  it speaks), ``notifications/initialized``, then requests without an envelope; ``ping``.
- 2026-07-28 (stateless): no handshake; ``server/discover`` is an optional probe, and every
  request carries ``_meta["io.modelcontextprotocol/protocolVersion"]`` (with the client's info
  and capabilities). Results carry ``resultType``; list results a cache hint.

Refusals are tool results with ``isError`` (never a JSON-RPC error, which clients show the model
less faithfully), text a model and a person can act on, and the same facts structured in the
result's ``_meta`` under :data:`DENIAL_META_KEY`, shaped after the MCP proposal for structured
authorization denials (SEP-2643): a reason, the policy ids, remediation hints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSONRPC = "2.0"
MODERN = "2026-07-28"
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
DENIAL_META_KEY = "broker.v1/denial"

# JSON-RPC error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNSUPPORTED_PROTOCOL_VERSION = -32022

SERVER_INFO = {"name": "broker-gateway", "title": "broker gateway", "version": "0.1.0"}
INSTRUCTIONS = (
    "Tools of several MCP servers, each named SERVER__TOOL. Every call is authorized by the "
    "broker for exactly its arguments; a refused call returns an error result that says why "
    "and what to do. Do not retry a refused call unchanged."
)


class JsonRpcError(Exception):
    """A request the gateway answers with a JSON-RPC error (not a tool result)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def response(msg_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": msg_id, "result": dict(result)}


def error(msg_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": JSONRPC, "id": msg_id, "error": err}


def notification(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        msg["params"] = dict(params)
    return msg


def request_version(params: Mapping[str, Any] | None) -> str | None:
    """The protocol version a 2026-07-28 style request names in its ``_meta``, or None."""
    meta = (params or {}).get("_meta")
    if isinstance(meta, dict):
        version = meta.get(PROTOCOL_VERSION_KEY)
        if isinstance(version, str):
            return version
    return None


def client_name(params: Mapping[str, Any] | None) -> str:
    """The client's name, from initialize's clientInfo or a modern request's _meta."""
    params = params or {}
    info = params.get("clientInfo")
    meta = params.get("_meta")
    if not isinstance(info, dict) and isinstance(meta, dict):
        info = meta.get(CLIENT_INFO_KEY)
    if isinstance(info, dict):
        name = info.get("title") or info.get("name")
        if isinstance(name, str):
            return name[:80]
    return ""


def capabilities() -> dict[str, Any]:
    return {"tools": {"listChanged": True}}


def initialize_result(requested: Any) -> dict[str, Any]:
    """The answer to ``initialize``: the client's version when we speak it, else our latest
    (the client then decides whether to go on)."""
    version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
    return {
        "protocolVersion": version,
        "capabilities": capabilities(),
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
    }


def discover_result() -> dict[str, Any]:
    return {
        "supportedVersions": [MODERN],
        "capabilities": capabilities(),
        "instructions": INSTRUCTIONS,
        "cacheScope": "private",
        "ttlMs": 0,
    }


def unsupported_version(msg_id: Any, version: str) -> dict[str, Any]:
    return error(
        msg_id,
        UNSUPPORTED_PROTOCOL_VERSION,
        f"unsupported protocol version {version!r}",
        {"supported": [MODERN, *reversed(HANDSHAKE_VERSIONS)], "requested": version},
    )


def modern(result: dict[str, Any], *, cacheable: bool = False) -> dict[str, Any]:
    """A result as 2026-07-28 wants it: ``resultType``, the server's info, a cache hint."""
    out = dict(result)
    out.setdefault("resultType", "complete")
    if cacheable:
        out.setdefault("cacheScope", "private")
        out.setdefault("ttlMs", 0)
    meta = dict(out.get("_meta") or {})
    meta[SERVER_INFO_KEY] = {"name": SERVER_INFO["name"], "version": SERVER_INFO["version"]}
    out["_meta"] = meta
    return out


@dataclass(frozen=True)
class Refusal:
    """Why a tool call was not made (or its result withheld), for the model and the person.

    ``reason``: a broker.v1 reason code (POLICY_DENIED, OUTSIDE_PLAN, APPROVAL_REQUIRED, ...) or
    one of the gateway's own (UNKNOWN_TOOL, BROKER_UNAVAILABLE, UPSTREAM_UNAVAILABLE)."""

    tool: str
    reason: str
    message: str
    policy_ids: tuple[str, ...] = ()
    why: tuple[str, ...] = ()  # the policies' own reasons, when known
    hints: tuple[str, ...] = ()
    approval_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"The broker refused {self.tool}: {self.reason}. {self.message}".rstrip()]
        if self.approval_id:
            lines[0] = f"{self.tool} is waiting for an operator's approval ({self.approval_id})."
            lines.append(self.message)
        if self.policy_ids:
            lines.append(f"Policy: {', '.join(self.policy_ids)}.")
        lines.extend(f"Why: {w}" for w in self.why)
        lines.extend(f"What to do: {h}" for h in self.hints)
        return "\n".join(line for line in lines if line)

    def result(self) -> dict[str, Any]:
        denial: dict[str, Any] = {
            "reason": self.reason,
            "message": self.message,
            "policyIds": list(self.policy_ids),
            "remediation": [{"type": "hint", "text": h} for h in self.hints],
            **dict(self.extra),
        }
        if self.why:
            denial["why"] = list(self.why)
        if self.approval_id:
            denial["approvalId"] = self.approval_id
        return {
            "content": [{"type": "text", "text": self.text()}],
            "isError": True,
            "_meta": {DENIAL_META_KEY: denial},
        }


def tool_entry(server: str, tool: Mapping[str, Any], note: str = "") -> dict[str, Any]:
    """An upstream tool as the gateway lists it: SERVER__TOOL, same description and schemas."""
    entry = {k: v for k, v in tool.items() if k not in ("name", "_meta", "execution")}
    entry["name"] = f"{server}__{tool['name']}"
    if isinstance(tool.get("title"), str):
        entry["title"] = f"{server}: {tool['title']}"
    if note:
        entry["description"] = f"{tool.get('description') or ''}\n\n{note}".strip()
    entry.setdefault("inputSchema", {"type": "object"})
    return entry


def split_tool(name: Any, servers: Sequence[str]) -> tuple[str, str] | None:
    """``SERVER__TOOL`` -> (SERVER, TOOL) for a configured SERVER, else None."""
    if not isinstance(name, str):
        return None
    server, sep, tool = name.partition("__")
    if not sep or not tool or server not in servers:
        return None
    return server, tool
