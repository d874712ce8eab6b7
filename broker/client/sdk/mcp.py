"""Calling tools of broker-guarded MCP servers from an agent (needs ``broker[mcp]``).

    async with client.task("update the retry docs") as task:
        async with McpTools(task, "docs", "http://127.0.0.1:8101/mcp") as docs:
            result = await docs.call_tool("search_docs", {"query": "retry"})

Each ``call_tool`` asks the broker for a credential for exactly that call, then makes it over
streamable HTTP with ``Authorization: Bearer <credential>`` on every request of it (a fresh MCP
client per call: a credential is good for one call, so nothing outlives it). Refusals come back
as the broker's typed errors: the broker's (``PermissionDenied``, ``FailedPrecondition``, ...)
before the call, the server's ``Unauthenticated`` (with its reason) when it refuses the
credential.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from broker.client.mcp.wire import CREDENTIAL_REJECTED, DOMAIN
from broker.client.sdk.client import Task
from broker.core.errors import Reason, Unauthenticated


@dataclass
class _Call:
    """The credential of the call being made, and the challenge of a 401 if one came back."""

    token: str | None
    challenge: str | None = None


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "broker_mcp_call", default=None
)


class _Bearer(httpx2.Auth):
    """``Authorization: Bearer`` with the credential of the call being made (a context
    variable, so concurrent calls on one HTTP client each send their own); notes a 401."""

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        call = _CALL.get()
        if call is not None and call.token is not None:
            request.headers["Authorization"] = f"Bearer {call.token}"
        response = yield request
        if call is not None and response.status_code == 401:
            call.challenge = response.headers.get("www-authenticate", "")


class McpTools:
    """The tools of one MCP server (``server``: registry name or SPIFFE ID, at ``url``), called
    within ``task``."""

    def __init__(
        self, task: Task, server: str, url: str, *, http: httpx2.AsyncClient | None = None
    ) -> None:
        self.task = task
        self.server = server
        self.url = url
        self._own_http = http is None
        self._http = http or httpx2.AsyncClient(
            auth=_Bearer(), timeout=httpx2.Timeout(30.0, read=300.0)
        )

    async def __aenter__(self) -> McpTools:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def call_tool(
        self, tool: str, arguments: Mapping[str, Any] | None = None, **credential: Any
    ) -> CallToolResult:
        """Get a credential for this call (``credential``: extra ``Task.credential`` keyword
        arguments) and make it. Raises the broker's typed errors."""
        args = dict(arguments or {})
        cred = await self.task.credential(self.server, tool, args, **credential)
        return await self.call_with(cred.token, tool, args)

    async def call_with(
        self, token: str | None, tool: str, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        """Call ``tool`` presenting ``token`` (None: no credential at all). ``call_tool`` is
        the normal way; this one is for replays and tests of a server's checks."""
        call = _Call(token)
        bound = _CALL.set(call)
        try:
            async with Client(streamable_http_client(self.url, http_client=self._http)) as client:
                # The SDK lists the tools to check a result's schema; listed before the call,
                # while the credential is unused (a used one is refused at every request).
                await client.list_tools()
                return await client.call_tool(tool, dict(arguments))
        except Exception as exc:
            if call.challenge is not None:
                raise refusal_of(self.server, call.challenge) from None
            rejected = _credential_rejection(exc)
            if rejected is not None:
                reason = Reason(rejected.data["reason"])
                message = rejected.message.removeprefix(f"{reason.value}: ")
                raise Unauthenticated(f"{self.server}: {message}", reason) from None
            raise
        finally:
            _CALL.reset(bound)


def _credential_rejection(exc: BaseException) -> MCPError | None:
    """The guard's CREDENTIAL_REJECTED error in ``exc`` (or in an exception group)."""
    if isinstance(exc, MCPError):
        data = exc.data if isinstance(exc.data, dict) else {}
        if (
            exc.code == CREDENTIAL_REJECTED
            and data.get("domain") == DOMAIN
            and data.get("reason") in Reason.__members__
        ):
            return exc
        return None
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _credential_rejection(inner)
            if found is not None:
                return found
    return None


_DESCRIPTION = re.compile(r'error_description="([A-Z_]+): ([^"]*)"')


def refusal_of(server: str, challenge: str) -> Unauthenticated:
    """The ``Unauthenticated`` an HTTP 401 stands for: the reason a guarded server names in
    ``WWW-Authenticate`` (``broker.client.mcp.guard.RefusalReasons``), else "no credential"."""
    m = _DESCRIPTION.search(challenge)
    if m and m.group(1) in Reason.__members__:
        return Unauthenticated(f"{server}: {m.group(2)}", Reason(m.group(1)))
    return Unauthenticated(
        f"{server} requires a credential (HTTP 401, WWW-Authenticate: {challenge})",
        Reason.MALFORMED_TOKEN,
    )
