"""The guard's HTTP face: an ASGI app serving MCP's streamable HTTP transport at ``/mcp`` to
clients of both live protocol revisions, in front of one upstream (``broker.client.guard``).

Per request: parse one JSON-RPC message; find out who calls (``auth``); then
- ``initialize`` (2025-11-25) / ``server/discover`` (2026-07-28): answered by the guard from the
  upstream's capabilities, cut down to what the guard lets through;
- ``ping``, ``tools/list``, ``logging/setLevel``: an authenticated caller is enough (an agent
  SVID over mTLS, or a credential for this server: checked, not consumed); ``tools/list`` is the
  catalog's listing (registry tools whose pins match);
- ``tools/call``: the enforcement core (``broker.client.mcp.enforce``) admits the call with its
  own credential (consumed), the upstream runs it, the result is sanitized and reported;
- ``resources/*``, ``prompts/*``: passed through only when the registry allows them for this
  server (else refused, fail closed); anything else: METHOD_NOT_FOUND.
Refusals never reach the upstream, and the credential never does: the guard makes its own
requests to the upstream.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from typing import Any

from opentelemetry import context as otel_context

from broker.client.guard import jsonrpc
from broker.client.guard.auth import Caller, caller_of
from broker.client.guard.catalog import Catalog, ToolRefused
from broker.client.guard.jsonrpc import Message, ProtocolError
from broker.client.guard.upstream import Upstream, UpstreamError, UpstreamUnavailable
from broker.client.mcp.enforce import Enforcer, Withheld, clean_tool_result
from broker.client.mcp.resource import (
    challenge,
    metadata_document,
    metadata_path,
    unauthorized_body,
)
from broker.client.trace_context import extract_meta, inject_meta
from broker.core.errors import Reason, Unauthenticated

log = logging.getLogger("broker.guard")

MAX_BODY = 4 * 1024 * 1024
MAX_SESSIONS = 10_000
# Refusals that prove the credential authentic (only its binding failed): the caller is
# authenticated, so they are JSON-RPC errors, not HTTP 401.
BINDING_REASONS = frozenset(
    {Reason.TOOL_MISMATCH, Reason.ARGS_MISMATCH, Reason.REPLAYED, Reason.CERT_MISMATCH}
)
PEER_CERT_KEY = "broker_peer_cert_der"  # scope["state"] key filled by broker.client.guard.tls

Send = Any
Receive = Any
Scope = dict[str, Any]


class Reply:
    """An HTTP answer: status, JSON body (or none), extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: Any = None, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []


class GuardApp:
    def __init__(
        self,
        *,
        enforcer: Enforcer,
        upstream: Upstream,
        catalog: Catalog,
        resource_url: str,
        trust_domain: str,
        server_id: str,
        call_timeout: float = 120.0,
    ) -> None:
        self.enforcer = enforcer
        self.verifier = enforcer.verifier
        self.upstream = upstream
        self.catalog = catalog
        self.resource_url = resource_url
        self.trust_domain = trust_domain
        self.server_id = server_id
        self.call_timeout = call_timeout
        self._metadata_path = metadata_path(resource_url)
        self._sessions: OrderedDict[str, float] = OrderedDict()

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        reply = await self._route(scope, receive)
        headers = [(b"content-type", b"application/json"), *reply.headers]
        body = b"" if reply.body is None else jsonrpc.dumps(reply.body)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> Reply:
        path, method = scope["path"], scope["method"]
        if path in (self._metadata_path, "/.well-known/oauth-protected-resource"):
            if method != "GET":
                return Reply(405, headers=[(b"allow", b"GET")])
            name = self.catalog.policy.name if self.catalog.policy else self.server_id
            return Reply(200, metadata_document(self.resource_url, f"MCP server {name}"))
        if path.rstrip("/") != "/mcp":
            return Reply(404, {"error": "not found: the MCP endpoint is /mcp"})
        if method == "GET":  # no server-initiated stream: the guard sends nothing unasked
            return Reply(405, headers=[(b"allow", b"POST, DELETE")])
        if method == "DELETE":
            sid = _header(scope, b"mcp-session-id")
            if sid is None or self._sessions.pop(sid, None) is None:
                return Reply(404, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "unknown session"))
            return Reply(200)
        if method != "POST":
            return Reply(405, headers=[(b"allow", b"POST, DELETE")])
        body = await _read_body(receive)
        if body is None:
            return Reply(413, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "body too large"))
        try:
            message = jsonrpc.parse(body)
        except ProtocolError as exc:
            return Reply(400, jsonrpc.error(None, exc.code, exc.message, exc.data))
        state = scope.get("state") or {}
        caller = caller_of(scope["headers"], state.get(PEER_CERT_KEY), self.trust_domain)
        return await self._handle(scope, message, caller)

    # -- MCP -----------------------------------------------------------------------------------

    async def _handle(self, scope: Scope, message: Message, caller: Caller) -> Reply:
        sid = _header(scope, b"mcp-session-id")
        if sid is not None and sid not in self._sessions and message.method != "initialize":
            return Reply(404, jsonrpc.error(message.id, jsonrpc.INVALID_REQUEST, "unknown session"))
        era = jsonrpc.era_of(message, _header(scope, b"mcp-protocol-version"))
        if message.method == "tools/call" and message.is_request:
            reply = await self._call_tool(message, caller)
        else:
            denied = await self._authenticate(message, caller)
            if denied is not None:
                return denied
            if not message.is_request:
                return Reply(202)  # notifications and responses: accepted, not forwarded
            reply = await self._session_request(message, era)
        body = reply.body
        if (
            jsonrpc.is_modern(era)
            and isinstance(body, dict)
            and isinstance(body.get("result"), dict)
        ):
            body["result"] = jsonrpc.modernize(message.method or "", body["result"])
        return reply

    async def _authenticate(self, message: Message, caller: Caller) -> Reply | None:
        """None when the caller may make session-level requests; else the 401."""
        if caller.agent and caller.token is None:
            return None
        if caller.token is None:
            why = caller.cert_problem or "no credential and no agent certificate"
            return self._unauthorized(message, Reason.NO_CREDENTIAL.value, why, invalid=False)
        try:
            await self.verifier.authenticate(caller.token)
        except Unauthenticated as exc:
            if caller.agent:
                log.info("a listing credential was refused (%s); the agent SVID stands", exc.reason)
                return None
            return self._unauthorized(message, exc.reason.value, exc.message, invalid=True)
        return None

    def _unauthorized(self, message: Message, reason: str, said: str, *, invalid: bool) -> Reply:
        log.info("%s refused with HTTP 401: %s", message.method or "a message", reason)
        text = f"{reason}: {said}"
        return Reply(
            401,
            unauthorized_body(message.id, reason, said, self.resource_url),
            [(b"www-authenticate", challenge(self.resource_url, text, invalid=invalid))],
        )

    async def _session_request(self, message: Message, era: str) -> Reply:
        method = message.method
        if method == "initialize":
            return self._initialize(message)
        if method == "server/discover":
            return Reply(200, jsonrpc.result(message.id, self._discover(era)))
        if method in ("ping", "logging/setLevel"):
            return Reply(200, jsonrpc.result(message.id, {}))
        if method == "tools/list":
            try:
                await self.catalog.refresh()
            except UpstreamUnavailable as exc:
                return self._upstream_down(message, str(exc))
            except UpstreamError as exc:
                return Reply(200, {"jsonrpc": "2.0", "id": message.id, "error": exc.error})
            return Reply(200, jsonrpc.result(message.id, {"tools": self.catalog.listing()}))
        policy = self.catalog.policy
        allowed = (method in jsonrpc.RESOURCE_METHODS and policy and policy.allow_resources) or (
            method in jsonrpc.PROMPT_METHODS and policy and policy.allow_prompts
        )
        if allowed and method is not None:
            return await self._forward(message, method)
        if method in jsonrpc.RESOURCE_METHODS | jsonrpc.PROMPT_METHODS:
            kind = "resources" if method.startswith("resources") else "prompts"
            return Reply(
                200,
                jsonrpc.refusal(
                    message.id,
                    jsonrpc.REFUSED,
                    "NOT_ALLOWED",
                    f"{kind} of this server are not allowed by the broker's registry",
                ),
            )
        return Reply(
            200, jsonrpc.error(message.id, jsonrpc.METHOD_NOT_FOUND, f"method not found: {method}")
        )

    def _capabilities(self) -> dict[str, Any]:
        caps: dict[str, Any] = {"tools": {"listChanged": False}}
        upstream = (self.upstream.init_result or {}).get("capabilities") or {}
        policy = self.catalog.policy
        if policy and policy.allow_resources and "resources" in upstream:
            caps["resources"] = {"subscribe": False, "listChanged": False}
        if policy and policy.allow_prompts and "prompts" in upstream:
            caps["prompts"] = {"listChanged": False}
        return caps

    def _server_info(self) -> dict[str, Any]:
        info = (self.upstream.init_result or {}).get("serverInfo")
        return info if isinstance(info, dict) else {"name": self.server_id, "version": ""}

    def _initialize(self, message: Message) -> Reply:
        version = jsonrpc.negotiate(message.params.get("protocolVersion"))
        sid = secrets.token_urlsafe(24)
        self._sessions[sid] = time.monotonic()
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        answer = {
            "protocolVersion": version,
            "capabilities": self._capabilities(),
            "serverInfo": self._server_info(),
        }
        instructions = (self.upstream.init_result or {}).get("instructions")
        if isinstance(instructions, str):
            answer["instructions"] = instructions
        return Reply(200, jsonrpc.result(message.id, answer), [(b"mcp-session-id", sid.encode())])

    def _discover(self, era: str) -> dict[str, Any]:
        return {
            "supportedVersions": list(jsonrpc.MODERN_VERSIONS),
            "capabilities": self._capabilities(),
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": self._server_info()},
        }

    def _upstream_down(self, message: Message, said: str) -> Reply:
        """UPSTREAM_UNAVAILABLE. ``said`` names the upstream's command line or URL and the
        transport's error: it goes to the guard's log only, never to a client (an internal
        address is not the caller's business)."""
        log.warning("%s refused: UPSTREAM_UNAVAILABLE: %s", message.method, said)
        public = (
            "the MCP server behind this guard is restarting or cannot be reached; "
            "try again shortly (the guard's log has the detail)"
        )
        return Reply(
            200,
            jsonrpc.refusal(
                message.id, jsonrpc.UPSTREAM_UNAVAILABLE, "UPSTREAM_UNAVAILABLE", public
            ),
        )

    async def _forward(self, message: Message, method: str) -> Reply:
        params = {k: v for k, v in message.params.items() if k != "_meta"}
        try:
            value = await self.upstream.request(method, params)
        except UpstreamUnavailable as exc:
            return self._upstream_down(message, str(exc))
        except UpstreamError as exc:
            error = clean_tool_result(exc.error, self.enforcer.allowed_hosts, [])
            return Reply(200, {"jsonrpc": "2.0", "id": message.id, "error": error})
        # No credential names a task here, so nothing can be reported or tainted: the text is
        # sanitized and the registry should allow resources/prompts only of trusted servers.
        cleaned = clean_tool_result(value, self.enforcer.allowed_hosts, [])
        return Reply(200, jsonrpc.result(message.id, cleaned if isinstance(cleaned, dict) else {}))

    # -- tools/call ----------------------------------------------------------------------------

    async def _call_tool(self, message: Message, caller: Caller) -> Reply:
        # The caller's W3C trace context (MCP _meta) is current for the whole call: the broker
        # calls it makes carry it in their gRPC metadata, the upstream call in its _meta.
        token = otel_context.attach(extract_meta(message.params.get("_meta")))
        try:
            return await self._call_tool_in_trace(message, caller)
        finally:
            otel_context.detach(token)

    async def _call_tool_in_trace(self, message: Message, caller: Caller) -> Reply:
        params = message.params
        tool, arguments = params.get("name"), params.get("arguments", {})
        if caller.token is None and not caller.agent:
            why = caller.cert_problem or "no credential and no agent certificate"
            return self._unauthorized(message, Reason.NO_CREDENTIAL.value, why, invalid=False)
        if not isinstance(tool, str) or not tool:
            return Reply(
                200, jsonrpc.error(message.id, jsonrpc.INVALID_PARAMS, "params.name: a tool name")
            )
        try:
            self.catalog.check(tool)  # nothing consumed for a tool that is not offered
        except ToolRefused as exc:
            log.info("tools/call %r refused: %s", tool[:128], exc.reason)
            return Reply(
                200, jsonrpc.refusal(message.id, jsonrpc.INVALID_PARAMS, exc.reason, exc.message)
            )
        if not self.upstream.ready:  # a call that cannot run spends no credential
            return self._upstream_down(
                message, f"the {self.upstream.description} is restarting; try again shortly"
            )
        try:
            call = await self.enforcer.admit(
                caller.token,
                tool=tool,
                arguments=arguments,
                presenter_cert_sha256=caller.cert_sha256,
            )
        except Unauthenticated as exc:
            if caller.agent or exc.reason in BINDING_REASONS or caller.token is None:
                return Reply(
                    200,
                    jsonrpc.refusal(
                        message.id, jsonrpc.CREDENTIAL_REJECTED, exc.reason.value, exc.message
                    ),
                )
            return self._unauthorized(message, exc.reason.value, exc.message, invalid=True)
        trusted = self.catalog.policy.trusted if self.catalog.policy else None
        try:
            forwarded: dict[str, Any] = {"name": tool, "arguments": arguments}
            if trace_meta := inject_meta():  # only the trace context of the caller's _meta
                forwarded["_meta"] = trace_meta
            value = await self.upstream.request("tools/call", forwarded, seconds=self.call_timeout)
        except UpstreamError as exc:  # the model reads error text too: sanitized and reported
            try:
                cleaned_error = await self.enforcer.release(
                    call, exc.error, trusted=trusted, succeeded=False, clean=clean_tool_result
                )
            except Withheld as withheld:
                cleaned_error = {"code": jsonrpc.INTERNAL_ERROR, "message": str(withheld)}
            return Reply(200, {"jsonrpc": "2.0", "id": message.id, "error": cleaned_error})
        except UpstreamUnavailable as exc:
            await self.enforcer.report_failure(call, trusted)
            return self._upstream_down(message, str(exc))
        if not isinstance(value, dict):
            value = {"content": [], "isError": True}
        try:
            cleaned = await self.enforcer.release(
                call,
                value,
                trusted=trusted,
                succeeded=value.get("isError") is not True,
                clean=clean_tool_result,
            )
        except Withheld as exc:
            cleaned = {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        return Reply(200, jsonrpc.result(message.id, cleaned))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not event.get("more_body"):
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = ["PEER_CERT_KEY", "GuardApp"]
