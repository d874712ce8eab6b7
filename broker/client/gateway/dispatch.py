"""JSON-RPC dispatch for one client session, both protocol revisions (see ``wire``).

Why not the MCP SDK's server classes: the gateway is a proxy. It passes upstream tool schemas
and results through as JSON (typed models would re-serialise or reject what a third-party server
sends), it must tie a broker task to the life of a connection (begin on the first message, end
on EOF, a signal, or an HTTP session's close) and answer signals within a few hundred
milliseconds, and the protocol surface it serves is small: initialize / server/discover, ping,
tools/list, tools/call, and two notifications.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import context as otel_context

from broker.client.gateway import wire
from broker.client.gateway.session import Session
from broker.client.gateway.wire import JsonRpcError
from broker.client.trace_context import extract_meta

log = logging.getLogger("broker.gateway")


class Dispatcher:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.era: str | None = None  # "handshake" | "modern", from the first request

    async def handle(self, msg: Any) -> dict[str, Any] | None:
        """The response to one incoming message (None for notifications and responses)."""
        if not isinstance(msg, dict) or msg.get("jsonrpc") != wire.JSONRPC:
            return wire.error(None, wire.INVALID_REQUEST, "not a JSON-RPC 2.0 message")
        method = msg.get("method")
        msg_id = msg.get("id")
        if not isinstance(method, str):
            return None  # a response to a request of ours (we send none) or junk: ignore
        params = msg.get("params")
        if params is not None and not isinstance(params, dict):
            return wire.error(msg_id, wire.INVALID_PARAMS, "params must be an object")
        if "id" not in msg:
            await self._notification(method, params or {})
            return None
        try:
            return await self._request(msg_id, method, params or {})
        except JsonRpcError as exc:
            return wire.error(msg_id, exc.code, exc.message, exc.data)

    async def _notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/initialized":
            self.era = self.era or "handshake"
        # notifications/cancelled is handled by the transport (it owns the running requests)

    async def _request(self, msg_id: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
        session = self.session
        version = wire.request_version(params)
        if method == "initialize":
            self.era = "handshake"
            session.client_name = wire.client_name(params) or session.client_name
            await session.try_begin()
            return wire.response(msg_id, wire.initialize_result(params.get("protocolVersion")))
        if version is not None:
            if version != wire.MODERN:
                return wire.unsupported_version(msg_id, version)
            if self.era is None:
                self.era = "modern"
            if not session.client_name:
                session.client_name = wire.client_name(params)
        modern = version is not None
        if method == "server/discover":
            await session.try_begin()
            return wire.response(msg_id, wire.modern(wire.discover_result()))
        if method == "ping":
            return wire.response(msg_id, wire.modern({}) if modern else {})
        if method == "tools/list":
            result: dict[str, Any] = {"tools": await session.list_tools()}
            return wire.response(msg_id, wire.modern(result, cacheable=True) if modern else result)
        if method == "tools/call":
            # The caller's W3C trace context (_meta) is current for the call: RequestCredential
            # and the upstream call carry it on (docs/gateway.md, "Traces").
            token = otel_context.attach(extract_meta(params.get("_meta")))
            try:
                result = await session.call_tool(params.get("name"), params.get("arguments"))
            finally:
                otel_context.detach(token)
            return wire.response(msg_id, wire.modern(result) if modern else result)
        if method == "logging/setLevel":
            return wire.response(msg_id, {})
        return wire.error(msg_id, wire.METHOD_NOT_FOUND, "Method not found", method)
