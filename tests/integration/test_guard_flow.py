"""Issue 11: `broker guard` in front of the real npm server-filesystem (stdio), a real broker,
the agent SDK and the MCP Python SDK client: what is allowed passes, what is not never reaches
the server, and each refusal says why."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from broker.app import feed
from broker.client.guard.run import Guard
from broker.client.sdk.client import BrokerClient
from broker.client.sdk.mcp import McpTools
from tests.integration.conftest import Running, start_broker
from tests.integration.guard_harness import (
    agent,
    filesystem_command,
    guard,
    post_call,
    py_client,
    text_of,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    (root / "notes.txt").write_text("retry with backoff\n")
    return root


@pytest.fixture
async def running(pki: Path, fast_heartbeat: None) -> AsyncIterator[Running]:
    r = await start_broker(pki)
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def files(running: Running, files_root: Path) -> AsyncIterator[Guard]:
    async with guard(running, "files", upstream_command=filesystem_command(files_root)) as g:
        yield g


@pytest.fixture
async def demo(running: Running) -> AsyncIterator[BrokerClient]:
    async with agent(running) as a:
        yield a


READ = {"path": "notes.txt"}


async def test_allowed_read_with_the_agent_sdk(
    running: Running, files: Guard, demo: BrokerClient, files_root: Path
) -> None:
    async with demo.task("read my notes") as task, McpTools(task, "files", files.url) as fs:
        result = await fs.call_tool("read_text_file", READ)
        assert not result.is_error
        assert "retry with backoff" in "".join(getattr(c, "text", "") for c in result.content)
        await files.app.enforcer.flush()  # trusted and clean: reported after the answer
    events = [r.body for r in running.sink.records]
    reported = [e for e in events if e.get("event") == "outcome.report"]
    assert [e["tool"] for e in reported] == ["read_text_file"]
    assert reported[0]["server"] == "spiffe://dev.local/mcp/files"


async def test_listing_shows_only_registry_tools_and_calls_need_their_own_credential(
    files: Guard, demo: BrokerClient
) -> None:
    async with demo.task("look around") as task:
        cred = await task.credential("files", "list_directory", {"path": "."})
        async with py_client(files.url, cred.token) as client:
            listed = {t.name for t in (await client.client.list_tools()).tools}
            assert {"read_text_file", "write_file", "list_directory"} <= listed
            assert len(listed) == 14  # the registry's 14 tools of server-filesystem
            result = await client.call(cred.token, "list_directory", {"path": "."})
            assert "notes.txt" in text_of(result)
            # the same credential again: single use
            with pytest.raises(MCPError) as exc:
                await client.call(cred.token, "list_directory", {"path": "."})
            assert exc.value.error.data["reason"] == "REPLAYED"


async def test_refusals_name_their_reason_and_never_reach_the_server(
    files: Guard, demo: BrokerClient, files_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with demo.task("probe the guard") as task:
        read = await task.credential("files", "read_text_file", READ)
        other = await task.credential("files", "read_text_file", {"path": "other.txt"})
        foreign = await task.credential("docs", "search_docs", {"query": "retry"})
        async with py_client(files.url, read.token) as client:
            cases = [
                (read.token, "write_file", {"path": "x.txt", "content": "pwned"}, "TOOL_MISMATCH"),
                (other.token, "read_text_file", READ, "ARGS_MISMATCH"),
            ]
            for token, tool, args, reason in cases:
                with pytest.raises(MCPError) as exc:
                    await client.call(token, tool, args)
                assert exc.value.error.data["reason"] == reason, exc.value
                assert exc.value.error.message.startswith(reason)
            assert not (files_root / "x.txt").exists()  # the refused write never ran
            # the read credential still works for its own call (a refusal consumes nothing)
            assert "retry" in text_of(await client.call(read.token, "read_text_file", READ))
        # another server's credential does not even open a session here
        async with httpx2.AsyncClient() as http:
            resp = await http.post(
                files.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"authorization": f"Bearer {foreign.token}"},
            )
        assert resp.status_code == 401
        assert resp.json()["error"]["data"]["reason"] == "WRONG_AUDIENCE"
    logged = caplog.text
    assert "TOOL_MISMATCH" in logged  # the refusals are in the log ...
    for token in (read.token, other.token, foreign.token):  # ... the credentials never
        assert token not in logged
        assert token.split(".")[2] not in logged


async def test_no_credential_is_401_with_reason_and_resource_metadata(files: Guard) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {}}
    async with httpx2.AsyncClient() as http:
        resp = await http.post(files.url, json=body)
        assert resp.status_code == 401
        challenge = resp.headers["www-authenticate"]
        metadata_url = files.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{metadata_url}"' in challenge
        assert "NO_CREDENTIAL" in challenge
        error = resp.json()["error"]
        assert error["data"]["reason"] == "NO_CREDENTIAL"
        assert error["data"]["resource_metadata"] == metadata_url
        assert resp.json()["id"] == 7
        metadata = (await http.get(metadata_url)).json()
        assert metadata["resource"] == files.url
        assert "authorization_servers" not in metadata  # the broker is no OAuth server
    # the Python SDK shows the reason to its user
    with pytest.raises(Exception) as exc:  # noqa: PT011 - the SDK wraps it in a group
        async with py_client(files.url, None) as client:
            await client.client.list_tools()
    assert "NO_CREDENTIAL" in repr(exc.value)


async def test_both_protocol_revisions_are_answered(files: Guard, demo: BrokerClient) -> None:
    task = await demo.begin_task("probe the protocol")
    cred = await task.credential("files", "list_allowed_directories", {})
    auth = {"authorization": f"Bearer {cred.token}"}
    async with httpx2.AsyncClient() as http:
        modern = await http.post(
            files.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}},
            headers={**auth, "mcp-protocol-version": "2026-07-28"},
        )
        found = modern.json()["result"]
        assert found["supportedVersions"] == ["2026-07-28"]
        assert found["resultType"] == "complete"
        assert found["capabilities"] == {"tools": {"listChanged": False}}
        assert "mcp-session-id" not in modern.headers  # stateless
        legacy = await http.post(
            files.url,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}},
            },
            headers=auth,
        )
        assert legacy.json()["result"]["protocolVersion"] == "2025-06-18"
        assert legacy.json()["result"]["serverInfo"]["name"] == "secure-filesystem-server"
        assert legacy.headers["mcp-session-id"]
        forgotten = await http.post(
            files.url,
            json={"jsonrpc": "2.0", "id": 3, "method": "ping"},
            headers={**auth, "mcp-session-id": "not-a-session"},
        )
        assert forgotten.status_code == 404
    await task.end("done")


async def test_end_task_kills_a_leftover_credential_within_a_second(
    files: Guard, demo: BrokerClient
) -> None:
    task = await demo.begin_task("short task")
    cred = await task.credential("files", "read_text_file", READ)
    await task.end("done")
    started = time.monotonic()
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "read_text_file", "arguments": READ},
    }
    async with httpx2.AsyncClient() as http:
        while True:
            resp = await http.post(
                files.url, json=call, headers={"authorization": f"Bearer {cred.token}"}
            )
            if resp.status_code == 401:
                break
            assert "error" in resp.json(), "a credential of an ended task ran a tool"
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.02)
    assert time.monotonic() - started < 1.0
    assert resp.json()["error"]["data"]["reason"] == "REVOKED"


async def test_upstream_crash_clear_error_restart_and_no_credential_spent(
    files: Guard, demo: BrokerClient
) -> None:
    import os
    import signal

    upstream = files.upstream
    pid = upstream.pid  # type: ignore[attr-defined]
    assert pid is not None
    async with demo.task("survive a crash") as task:
        cred = await task.credential("files", "read_text_file", READ)
        os.killpg(pid, signal.SIGKILL)
        while upstream.ready:  # noqa: ASYNC110 - a flag of the upstream, no event
            await asyncio.sleep(0.01)
        # a tools/call while the upstream is down: a clear error, and the credential untouched
        status, body = await post_call(files.url, cred.token, "read_text_file", READ)
        assert status == 200 and body["error"]["data"]["reason"] == "UPSTREAM_UNAVAILABLE"
        assert "restarting" in body["error"]["message"]
        assert "node" not in body["error"]["message"]  # not the upstream's command line
        for _ in range(200):  # restarted with back-off (0.05 s in tests)
            if upstream.ready:
                break
            await asyncio.sleep(0.05)
        assert upstream.ready and upstream.pid != pid  # type: ignore[attr-defined]
        async with py_client(files.url, cred.token) as client:
            # the call that never ran spent nothing: the same credential works now
            assert "retry" in text_of(await client.call(cred.token, "read_text_file", READ))


async def test_unauthenticated_python_client_sees_the_reason(files: Guard) -> None:
    with pytest.raises(Exception) as exc:  # noqa: PT011
        async with py_client(files.url, "not-a-token") as client:
            await client.client.list_tools()
    assert "MALFORMED_TOKEN" in repr(exc.value)
