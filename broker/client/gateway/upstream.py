"""One upstream MCP server, reached over streamable HTTP (MCP 2025-11-25 transport).

The gateway keeps one protocol session per upstream (``initialize`` once, ``Mcp-Session-Id``
after), authenticated by the agent's X.509-SVID over mutual TLS: a broker guard accepts
session-level requests (initialize, tools/list) from an authenticated agent. Each ``tools/call``
carries ``Authorization: Bearer <credential>`` minted for exactly that call. Plain JSON-RPC over
HTTP POST (a JSON body or an SSE stream holding the answer): one request per call, no SDK client
state that could outlive a credential.

Over ``https`` the upstream's certificate must chain to the trust bundle and, being an
X.509-SVID, name the SPIFFE ID the gateway expects for that server (no DNS names in SVIDs).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2

from broker.client.gateway.config import UpstreamConfig
from broker.client.gateway.tls import TlsFiles
from broker.client.gateway.wire import LATEST_HANDSHAKE, SERVER_INFO
from broker.client.mcp.wire import CREDENTIAL_REJECTED, DOMAIN
from broker.client.trace_context import inject_meta
from broker.core.errors import Reason

_DESCRIPTION = re.compile(r'error_description="([A-Z_]+): ([^"]*)"')
ACCEPT = "application/json, text/event-stream"


class UpstreamError(Exception):
    """The upstream could not be reached or answered something that is not MCP."""

    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.message = message


class UpstreamRpcError(UpstreamError):
    """The upstream answered with a JSON-RPC error (passed on to the client as is)."""

    def __init__(self, server: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(server, message)
        self.code = code
        self.data = data


class CredentialRefused(UpstreamError):
    """The upstream (a guard) refused the credential: HTTP 401 or CREDENTIAL_REJECTED."""

    def __init__(self, server: str, reason: str, message: str) -> None:
        super().__init__(server, message)
        self.reason = reason


class _SessionGone(Exception):
    pass


class Upstream:
    def __init__(self, cfg: UpstreamConfig, tls: TlsFiles | None, expected_id: str = "") -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._tls = tls
        self._expected_id = expected_id
        self._http: httpx2.AsyncClient | None = None
        self._tls_generation = -1
        self._session_id: str | None = None
        self._version = LATEST_HANDSHAKE
        self._init_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self.instructions = ""

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- the two things the gateway asks ---------------------------------------------------

    async def list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100):  # pages; a server that never stops paging is cut off
            params = {"cursor": cursor} if cursor else {}
            result = await self._session_rpc("tools/list", params)
            tools.extend(
                t for t in result.get("tools") or () if isinstance(t, dict) and "name" in t
            )
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return tools

    async def call_tool(
        self, tool: str, arguments: Mapping[str, Any], token: str | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"name": tool, "arguments": dict(arguments)}
        if trace_meta := inject_meta():  # the current trace context, nothing else of _meta
            params["_meta"] = trace_meta
        return await self._session_rpc("tools/call", params, token=token)

    # -- the session ---------------------------------------------------------------------------

    async def _session_rpc(
        self, method: str, params: Mapping[str, Any], *, token: str | None = None
    ) -> dict[str, Any]:
        for attempt in range(2):
            session = await self._ensure_session()
            try:
                return await self._rpc(method, params, session=session, token=token)
            except _SessionGone:
                async with self._init_lock:
                    if self._session_id == session:
                        self._session_id = None
                if attempt:
                    break
        raise UpstreamError(self.name, "the server keeps dropping its MCP session")

    async def _ensure_session(self) -> str | None:
        if self._session_id is not None:
            return self._session_id
        async with self._init_lock:
            if self._session_id is not None:
                return self._session_id
            self._session_id = ""  # "" = stateless server (no Mcp-Session-Id handed out)
            result = await self._rpc(
                "initialize",
                {
                    "protocolVersion": LATEST_HANDSHAKE,
                    "capabilities": {},
                    "clientInfo": {"name": SERVER_INFO["name"], "version": SERVER_INFO["version"]},
                },
                session=None,
            )
            self._version = str(result.get("protocolVersion") or LATEST_HANDSHAKE)
            self.instructions = str(result.get("instructions") or "")
            await self._notify("notifications/initialized")
            return self._session_id

    def _client(self) -> httpx2.AsyncClient:
        generation = self._tls.generation if self._tls else 0
        if self._http is None or generation != self._tls_generation:
            old = self._http
            verify = self._tls.context() if self._tls else True
            self._http = httpx2.AsyncClient(
                verify=verify,
                trust_env=False,
                timeout=httpx2.Timeout(self.cfg.timeout, connect=10.0),
                limits=httpx2.Limits(max_keepalive_connections=32, keepalive_expiry=30.0),
            )
            self._tls_generation = generation
            if old is not None:  # a rotated SVID: new connections from now on
                asyncio.get_running_loop().create_task(old.aclose())
        return self._http

    def _headers(self, session: str | None, token: str | None, method: str) -> dict[str, str]:
        headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if session:
            headers["Mcp-Session-Id"] = session
        if session is not None:
            headers["Mcp-Protocol-Version"] = self._version
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _notify(self, method: str) -> None:
        body = {"jsonrpc": "2.0", "method": method}
        try:
            resp = await self._client().post(
                self.cfg.url,
                content=json.dumps(body),
                headers=self._headers(self._session_id, None, method),
            )
        except httpx2.HTTPError as exc:
            raise UpstreamError(self.name, f"cannot reach {self.cfg.url}: {exc!s}") from None
        await resp.aclose()

    async def _rpc(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        session: str | None,
        token: str | None = None,
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": dict(params)}
        try:
            async with self._post(body, self._headers(session, token, method)) as resp:
                if session is None:
                    self._session_id = resp.headers.get("mcp-session-id", "")
                elif resp.status_code == 404 and session:
                    raise _SessionGone
                if resp.status_code == 401:
                    raise _refusal(self.name, resp.headers.get("www-authenticate", ""))
                message = await self._answer(resp, msg_id)
        except httpx2.HTTPError as exc:
            raise UpstreamError(self.name, f"cannot reach {self.cfg.url}: {exc!s}") from None
        if "error" in message:
            err = message["error"] if isinstance(message["error"], dict) else {}
            data = err.get("data")
            code = int(err.get("code", -32603))
            text = str(err.get("message", "error"))
            if (
                code == CREDENTIAL_REJECTED
                and isinstance(data, dict)
                and data.get("domain") == DOMAIN
                and data.get("reason") in Reason.__members__
            ):
                reason = str(data["reason"])
                raise CredentialRefused(self.name, reason, text.removeprefix(f"{reason}: "))
            raise UpstreamRpcError(self.name, code, text, data)
        result = message.get("result")
        if not isinstance(result, dict):
            raise UpstreamError(self.name, f"{method}: the answer has no result object")
        return result

    @asynccontextmanager
    async def _post(
        self, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[httpx2.Response]:
        client = self._client()
        request = client.build_request(
            "POST", self.cfg.url, content=json.dumps(body), headers=headers
        )
        resp = await client.send(request, stream=True)
        try:
            self._check_peer(resp)
            yield resp
        finally:
            await resp.aclose()

    def _check_peer(self, resp: httpx2.Response) -> None:
        """Over https: the upstream's SVID must name the SPIFFE ID expected for it."""
        if not self._expected_id or not self.cfg.url.startswith("https:"):
            return
        stream = resp.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        uris = [v for k, v in (cert or {}).get("subjectAltName", ()) if k == "URI"]
        if uris != [self._expected_id]:
            raise UpstreamError(
                self.name,
                f"its certificate names {uris or 'no SPIFFE ID'}, expected {self._expected_id}: "
                "not calling it",
            )

    async def _answer(self, resp: httpx2.Response, msg_id: int) -> dict[str, Any]:
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "text/event-stream":
            async for message in _sse_messages(resp):
                if message.get("id") == msg_id and ("result" in message or "error" in message):
                    return message
            raise UpstreamError(self.name, "the event stream ended without an answer")
        raw = await resp.aread()
        if ctype != "application/json":
            raise UpstreamError(
                self.name, f"HTTP {resp.status_code} ({ctype or 'no content type'}), not MCP"
            )
        try:
            message = json.loads(raw)
        except ValueError:
            raise UpstreamError(self.name, f"HTTP {resp.status_code}: invalid JSON") from None
        if not isinstance(message, dict):
            raise UpstreamError(self.name, "the answer is not a JSON-RPC message")
        if resp.status_code >= 400 and "error" not in message:
            raise UpstreamError(self.name, f"HTTP {resp.status_code}")
        return message


async def _sse_messages(resp: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """JSON-RPC messages of a text/event-stream body (https://html.spec.whatwg.org/#server-sent-events)."""
    data: list[str] = []
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                try:
                    message = json.loads("\n".join(data))
                except ValueError:
                    message = None
                data = []
                if isinstance(message, dict):
                    yield message
            continue
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        try:
            message = json.loads("\n".join(data))
        except ValueError:
            return
        if isinstance(message, dict):
            yield message


def _refusal(server: str, challenge: str) -> CredentialRefused:
    m = _DESCRIPTION.search(challenge)
    if m and m.group(1) in Reason.__members__:
        return CredentialRefused(server, m.group(1), m.group(2))
    return CredentialRefused(
        server, "UNAUTHENTICATED", "the server asks for a credential (HTTP 401)"
    )
