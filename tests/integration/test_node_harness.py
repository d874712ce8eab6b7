"""The harness the guard and gateway tests stand on (tests/support/node.py): the real npm MCP
servers, driven by the official TypeScript SDK client (tests/node/mcp_client.mjs) and by the
MCP Python SDK client, and the TS client's report of a refused (401) request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from mcp import Client, StdioServerParameters
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.node import (
    NodeServer,
    everything_server_command,
    filesystem_server_command,
    run_ts_client,
    start_everything_http,
)

pytestmark = pytest.mark.integration

CHALLENGE = (
    'Bearer error="invalid_token", error_description="credential expired", '
    'resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource/mcp"'
)
REFUSAL = {"error": "invalid_token", "reason": "EXPIRED", "detail": "the credential expired"}


@pytest.fixture(scope="module")
def everything_http() -> Iterator[NodeServer]:
    with start_everything_http() as server:
        yield server


async def test_ts_client_lists_and_calls_server_everything(everything_http: NodeServer) -> None:
    run = await run_ts_client(
        {
            "url": everything_http.url,
            "trace": True,
            "steps": [
                {"op": "list_tools"},
                {
                    "op": "call_tool",
                    "name": "echo",
                    "arguments": {"message": "hello from node"},
                    "headers": {"Authorization": "Bearer first-call"},
                },
                {"op": "call_tool", "name": "echo", "arguments": {"message": 7}},
            ],
        }
    )
    assert run.connected, run.connect.error
    assert run.protocol_version == "2025-11-25"
    listed, echo, bad = run.steps
    tools = {t["name"]: t for t in listed.result["tools"]}
    assert {"echo", "get-sum", "get-env"} <= tools.keys()
    assert tools["echo"]["annotations"]["readOnlyHint"] is True
    assert echo.ok and not echo.is_error and echo.text == "Echo: hello from node"
    # A wrongly typed argument is the server's tool error, not a transport failure.
    assert bad.ok and bad.is_error and "Input validation error" in bad.text
    # The per-call header went on that call's request only, and never in clear in the trace.
    calls = [h for h in run.http if (h["request_body"] or {}).get("method") == "tools/call"]
    assert len(calls) == 2
    first_auth = calls[0]["request_headers"]["authorization"]
    assert first_auth.startswith("Bearer sha256:") and "first-call" not in first_auth
    assert "authorization" not in calls[1]["request_headers"]


async def test_python_sdk_client_over_streamable_http(everything_http: NodeServer) -> None:
    async with Client(everything_http.url) as client:
        assert client.protocol_version == "2025-11-25"
        tools = await client.list_tools()
        assert "echo" in {t.name for t in tools.tools}
        result = await client.call_tool("echo", {"message": "hello from python"})
    assert not result.is_error
    assert [c.text for c in result.content if c.type == "text"] == ["Echo: hello from python"]


async def test_python_sdk_client_over_stdio_reads_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("retry three times\n")
    command, *args = filesystem_server_command(tmp_path)
    async with Client(StdioServerParameters(command=command, args=args)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["write_file"].annotations is not None
        assert tools["write_file"].annotations.destructive_hint is True
        assert tools["read_text_file"].annotations is not None
        assert tools["read_text_file"].annotations.read_only_hint is True
        result = await client.call_tool("read_text_file", {"path": str(tmp_path / "notes.txt")})
        assert not result.is_error
        assert [c.text for c in result.content if c.type == "text"] == ["retry three times\n"]
        outside = await client.call_tool("read_text_file", {"path": "/etc/hostname"})
        assert outside.is_error


async def test_everything_over_stdio_answers_echo() -> None:
    command, *args = everything_server_command()
    async with Client(StdioServerParameters(command=command, args=args)) as client:
        result = await client.call_tool("echo", {"message": "stdio"})
    assert [c.text for c in result.content if c.type == "text"] == ["Echo: stdio"]


def _refusing_app() -> Starlette:
    async def mcp(request: Request) -> Response:
        await request.body()
        return JSONResponse(REFUSAL, status_code=401, headers={"WWW-Authenticate": CHALLENGE})

    return Starlette(routes=[Route("/mcp", mcp, methods=["POST", "GET", "DELETE"])])


@contextlib.asynccontextmanager
async def serving(app: Starlette, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in this loop on 127.0.0.1 and a free port; yield its /mcp URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    if tls is not None:
        server.config.load()
        server.config.ssl = tls
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


async def test_ts_client_reports_a_401_with_its_challenge_and_body() -> None:
    async with serving(_refusing_app()) as url:
        run = await run_ts_client({"url": url, "steps": [{"op": "list_tools"}]})
    assert not run.connected and run.steps == []
    refused = run.connect
    assert refused.error["kind"] == "http"
    assert refused.status == 401
    assert refused.www_authenticate == CHALLENGE
    assert refused.body == REFUSAL


async def test_ts_client_presents_its_certificate_and_checks_the_server_svid(pki: Path) -> None:
    # Server: the SVID of mcp/docs (URI SAN only), client certificates required.
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    tls.load_cert_chain(pki / "mcp-docs.crt", pki / "mcp-docs.key")
    tls.verify_mode = ssl.CERT_REQUIRED
    base = {"ca": pki / "ca.crt", "spiffe_id": "spiffe://dev.local/mcp/docs", "steps": []}
    agent = {"cert": pki / "agent-demo.crt", "key": pki / "agent-demo.key"}
    async with serving(_refusing_app(), tls) as url:
        with_cert = await run_ts_client({**base, **agent, "url": url})
        without_cert = await run_ts_client({**base, "url": url})
        wrong_server = await run_ts_client(
            {**base, **agent, "url": url, "spiffe_id": "spiffe://dev.local/mcp/repo"}
        )
    # The TLS handshake went through with the agent's certificate: the app itself answered.
    assert with_cert.connect.status == 401 and with_cert.connect.body == REFUSAL
    # Without one the server ends the handshake: no HTTP answer at all.
    assert without_cert.connect.error["kind"] == "other"
    assert without_cert.connect.status is None
    assert wrong_server.connect.error["kind"] == "other"
    assert "spiffe://dev.local/mcp/repo" in wrong_server.connect.error["cause"]["message"]
