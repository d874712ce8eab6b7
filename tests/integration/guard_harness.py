"""What the `broker guard` tests share: a real broker (tests/integration/conftest.py), a guard in
this event loop in front of a real npm MCP server (node_modules, installed by `make node-deps`),
agents on the broker SDK, and MCP clients of both SDKs.

The guard runs in-process (``broker.client.guard.run.Guard``, what `broker guard` runs) so tests
can reach its upstream's process; test_guard_cli.py runs the command itself.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from broker.client.guard.run import Guard, GuardOptions
from broker.client.sdk.channel import WorkloadCredentials
from broker.client.sdk.client import BrokerClient
from broker.client.verifier import VerifierSettings
from tests.integration.conftest import Running
from tests.support.node import filesystem_server_command

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "tests" / "support" / "mini_mcp.py"

SETTINGS = VerifierSettings(stale_after=0.6, backoff_initial=0.05, backoff_max=0.2)


def filesystem_command(root: Path) -> list[str]:
    return filesystem_server_command(root)


def mini_command(description_file: Path) -> list[str]:
    return [sys.executable, str(MINI), str(description_file)]


def options(running: Running, name: str, **overrides: Any) -> GuardOptions:
    pki = running.pki
    base: dict[str, Any] = {
        "broker": f"127.0.0.1:{running.port}",
        "ca": pki / "ca.crt",
        "cert": pki / f"mcp-{name}.crt",
        "key": pki / f"mcp-{name}.key",
        "settings": SETTINGS,
        "backoff_initial": 0.05,
        "start_timeout": 20.0,
    }
    base.update(overrides)
    return GuardOptions(**base)


@contextlib.asynccontextmanager
async def guard(running: Running, name: str, **overrides: Any) -> AsyncIterator[Guard]:
    async with Guard(options(running, name, **overrides)) as g:
        yield g


@contextlib.asynccontextmanager
async def agent(running: Running) -> AsyncIterator[BrokerClient]:
    creds = WorkloadCredentials.from_dev_dir(running.pki, "agent-demo")
    async with BrokerClient(f"127.0.0.1:{running.port}", credentials=creds) as client:
        yield client


class SwitchingBearer(httpx2.Auth):
    """``Authorization: Bearer <token>`` with a token the test changes between calls (one MCP
    session, one credential per tool call); None sends no header."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        if self.token is not None:
            request.headers["authorization"] = f"Bearer {self.token}"
        yield request


@dataclass
class PyClient:
    """The MCP Python SDK client (``mcp.Client``) on one session to a guard."""

    client: Client
    bearer: SwitchingBearer
    seen: list[httpx2.Response] = field(default_factory=list)

    async def call(self, token: str | None, tool: str, arguments: dict[str, Any]) -> Any:
        """The SDK lists the tools to check a result's schema: listed first, while the
        credential is unused (a used one is refused at every request, as by ToolGuard)."""
        self.bearer.token = token
        await self.client.list_tools()
        return await self.client.call_tool(tool, arguments)


@contextlib.asynccontextmanager
async def py_client(
    url: str,
    token: str | None,
    *,
    mode: str = "legacy",
    verify: Any = True,
    cert: Sequence[str] | None = None,
) -> AsyncIterator[PyClient]:
    bearer = SwitchingBearer(token)
    if isinstance(verify, str):  # a CA bundle, and maybe a client certificate (mutual TLS)
        context = ssl.create_default_context(cafile=verify)
        if cert:
            context.load_cert_chain(cert[0], cert[1])
        verify = context
    http = httpx2.AsyncClient(auth=bearer, verify=verify, timeout=30.0)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as c:  # type: ignore[arg-type]
        yield PyClient(c, bearer)


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def post_call(
    url: str, token: str | None, tool: str, arguments: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One tools/call as a bare HTTP POST (no session): status and JSON body."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    async with httpx2.AsyncClient(timeout=30.0) as http:
        resp = await http.post(url, json=body, headers=headers)
    return resp.status_code, resp.json()
