"""`broker gateway --listen`: streamable HTTP for unmodified clients, the official TypeScript SDK
client (2025-11-25, Mcp-Session-Id) and the MCP Python SDK client (2026-07-28, stateless: the
gateway's handle cookie). A task per session, ended when the session is idle, deleted, or the
gateway stops; Host and Origin checked against DNS rebinding."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from tests.integration.conftest import Running, start_broker
from tests.integration.operator import broker_cli
from tests.support.gateway import (
    HttpGateway,
    gateway_argv,
    gateway_env,
    start_http_gateway,
    write_config,
    write_registry,
)
from tests.support.node import NodeServer, run_ts_client, start_everything_http

pytestmark = pytest.mark.integration

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}


@pytest.fixture(scope="module")
def everything() -> Any:
    server = start_everything_http()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def running(pki: Path, tmp_path: Path) -> AsyncIterator[Running]:
    r = await start_broker(pki, registry=str(write_registry(tmp_path)))
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def gateway(
    running: Running, everything: NodeServer, tmp_path: Path
) -> AsyncIterator[HttpGateway]:
    config = write_config(
        tmp_path,
        {"everything": {"url": everything.url, "guarded": False}},
        idle_timeout=1.5,
        intent="answer questions over HTTP",
    )
    argv = gateway_argv(running.port, running.pki, config, listen="127.0.0.1:0")
    async with start_http_gateway(argv, gateway_env()) as gw:
        yield gw


async def tasks(running: Running) -> list[dict[str, Any]]:
    listed = (await broker_cli(running, "tasks", "list", "--state", "all", "--json")).json()
    return list(listed)


async def wait_ended(running: Running, count: int, within: float = 8.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        while True:
            found = await tasks(running)
            if len(found) == count and all(t["state"] == "TASK_STATE_ENDED" for t in found):
                return found
            await asyncio.sleep(0.2)


async def test_typescript_client_session_is_a_task_ended_when_idle(
    running: Running, gateway: HttpGateway
) -> None:
    run = await run_ts_client(
        {
            "url": gateway.url,
            "steps": [
                {"op": "list_tools"},
                {"op": "call_tool", "name": "everything__echo", "arguments": {"message": "hi"}},
                {"op": "call_tool", "name": "everything__get-sum", "arguments": {"a": 1, "b": 2}},
                {"op": "call_tool", "name": "nope__x"},
            ],
        }
    )
    assert run.connected, run.connect.error
    assert run.protocol_version == "2025-11-25"
    names = {t["name"] for t in run.steps[0].result["tools"]}
    assert {"everything__echo", "everything__get-sum"} <= names
    # not in the registry: never grantable
    assert "everything__toggle-simulated-logging" not in names
    assert run.steps[1].text == "Echo: hi"
    assert not run.steps[2].is_error and "3" in run.steps[2].text
    assert run.steps[3].is_error and "UNKNOWN_TOOL" in run.steps[3].text
    [task] = await tasks(running)
    assert task["intent"] == "answer questions over HTTP"
    assert "'everything'" in gateway.log.text() and "is not guarded" in gateway.log.text()
    await wait_ended(running, 1)  # idle_timeout 1.5 s
    assert "session idle" in (await broker_cli(running, "tasks", "show", task["task_id"])).out


async def test_python_sdk_client_stateless_shares_one_task(
    running: Running, gateway: HttpGateway
) -> None:
    async with Client(gateway.url) as client:  # probes server/discover: 2026-07-28
        names = {t.name for t in (await client.list_tools()).tools}
        assert "everything__echo" in names
        first = await client.call_tool("everything__echo", {"message": "one"})
        second = await client.call_tool("everything__get-sum", {"a": 1, "b": 2})
        assert not first.is_error and not second.is_error
        [task] = await tasks(running)  # one task for every request of this client
        assert task["state"] == "TASK_STATE_ACTIVE"
    assert "ALLOWED everything__echo" in gateway.log.text()


async def test_delete_and_sigterm_end_tasks(running: Running, gateway: HttpGateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        headers = {"Accept": "application/json, text/event-stream"}
        first = await http.post(gateway.url, json=INITIALIZE, headers=headers)
        second = await http.post(gateway.url, json=INITIALIZE, headers=headers)
        assert first.status_code == 200 and second.status_code == 200
        sid = first.headers["mcp-session-id"]
        assert len(sid) >= 40 and sid != second.headers["mcp-session-id"]
        deleted = await http.delete(gateway.url, headers={"Mcp-Session-Id": sid})
        assert deleted.status_code == 200
        gone = await http.post(
            gateway.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers={**headers, "Mcp-Session-Id": sid},
        )
        assert gone.status_code == 404
    found = await tasks(running)
    assert sorted(t["state"] for t in found) == ["TASK_STATE_ACTIVE", "TASK_STATE_ENDED"]
    gateway.signal(signal.SIGTERM)
    await asyncio.wait_for(gateway.proc.wait(), 5)
    await wait_ended(running, 2, within=2)


async def test_host_and_origin_are_checked(gateway: HttpGateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        headers = {"Accept": "application/json, text/event-stream"}
        rebound = await http.post(
            gateway.url, json=INITIALIZE, headers={**headers, "Host": "evil.example:80"}
        )
        assert rebound.status_code == 421
        cross = await http.post(
            gateway.url, json=INITIALIZE, headers={**headers, "Origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        local = await http.post(
            gateway.url, json=INITIALIZE, headers={**headers, "Origin": "http://localhost:3000"}
        )
        assert local.status_code == 200


async def test_off_loopback_needs_a_bearer_secret_and_it_is_checked(
    running: Running, everything: NodeServer, tmp_path: Path
) -> None:
    servers = {"everything": {"url": everything.url, "guarded": False}}
    bare = write_config(tmp_path, servers)
    # 192.0.2.1 (TEST-NET-1): refused before any bind is tried
    argv = gateway_argv(running.port, running.pki, bare, listen="192.0.2.1:0")
    proc = await asyncio.create_subprocess_exec(
        *argv, stderr=asyncio.subprocess.PIPE, env=gateway_env()
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"not a loopback address" in err and b"http_token_file" in err

    secret = tmp_path / "gateway.secret"
    secret.write_text("s3cret-" + "x" * 40 + "\n")
    (tmp_path / "secret").mkdir()
    config = write_config(tmp_path / "secret", servers, http_token_file=str(secret))
    argv = gateway_argv(running.port, running.pki, config, listen="127.0.0.1:0")
    async with start_http_gateway(argv, gateway_env()) as gw:  # a secret binds loopback too
        url = gw.url
        headers = {"Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(timeout=10) as http:
            denied = await http.post(url, json=INITIALIZE, headers=headers)
            assert denied.status_code == 401
            wrong = await http.post(
                url, json=INITIALIZE, headers={**headers, "Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 401
            ok = await http.post(
                url,
                json=INITIALIZE,
                headers={**headers, "Authorization": f"Bearer s3cret-{'x' * 40}"},
            )
            assert ok.status_code == 200
    assert "s3cret" not in gw.log.text()
