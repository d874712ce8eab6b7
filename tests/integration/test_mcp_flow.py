"""Issue 5: MCP servers guarded by broker credentials, end to end.

A real broker (gRPC, mutual TLS, dev PKI) in this event loop, the dev MCP servers of
examples/mcp_servers.py on free ports (the real MCP SDK over streamable HTTP, uvicorn), each with
its own certificate and an offline verifier following the revocation feed, and the agent SDK.
Bounds are short (heartbeat 0.1 s, stale after 0.6 s) to keep this fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from broker.app import feed
from broker.client.sdk.channel import WorkloadCredentials
from broker.client.sdk.client import BrokerClient, Task
from broker.client.sdk.mcp import McpTools
from broker.client.verifier import BaseVerifier, OfflineVerifier, VerifierSettings
from broker.core.errors import InvalidRequest, NotFound, PermissionDenied, Reason, Unauthenticated
from broker.core.model import Taint, TaskState
from examples.mcp_servers import run_servers
from tests.integration.conftest import Running, start_broker

pytestmark = pytest.mark.integration

SETTINGS = VerifierSettings(
    stale_after=0.6, backoff_initial=0.05, backoff_max=0.2, start_timeout=5.0
)
QUERY = {"query": "retry"}


@dataclass
class Stack:
    running: Running
    servers: dict[str, tuple[str, BaseVerifier]]
    agent: BrokerClient

    def url(self, name: str) -> str:
        return self.servers[name][0]

    def verifier(self, name: str) -> OfflineVerifier:
        v = self.servers[name][1]
        assert isinstance(v, OfflineVerifier)
        return v

    def tools(self, task: Task, name: str) -> McpTools:
        return McpTools(task, name, self.url(name))


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)


async def open_stack(pki: Path, mode: str = "offline") -> AsyncIterator[Stack]:
    running = await start_broker(pki)
    address = f"127.0.0.1:{running.port}"
    try:
        async with (
            run_servers(address, pki, port=0, mode=mode, settings=SETTINGS) as servers,
            BrokerClient(
                address, credentials=WorkloadCredentials.from_dev_dir(pki, "agent-demo")
            ) as agent,
        ):
            yield Stack(running, servers, agent)
    finally:
        await running.close()


@pytest.fixture
async def stack(pki: Path, fast_heartbeat: None) -> AsyncIterator[Stack]:
    async for s in open_stack(pki):
        yield s


async def refused(coro: Any) -> Reason:
    with pytest.raises(Unauthenticated) as exc:
        await coro
    return exc.value.reason


def text(result: Any) -> str:
    assert not result.is_error, result
    return "".join(getattr(c, "text", "") for c in result.content)


async def test_allowed_call_succeeds(stack: Stack) -> None:
    async with (
        stack.agent.task("fix the flaky retry test") as task,
        stack.tools(task, "docs") as docs,
    ):
        result = await docs.call_tool("search_docs", QUERY)
        assert "guides/retries.md" in text(result)
        # another server, another tier: each call carries its own credential
        async with stack.tools(task, "repo") as repo:
            assert "def backoff" in text(
                await repo.call_tool("read_file", {"path": "src/retry.py"})
            )
    assert task.ended
    bodies = [r.body for r in stack.running.sink.records]
    reported = [b for b in bodies if b.get("event") == "outcome.report"]
    assert {b["tool"] for b in reported} >= {"search_docs", "read_file"}


async def test_no_token_is_401_with_resource_metadata(stack: Stack) -> None:
    url = stack.url("docs")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient() as http:
        resp = await http.post(url, json=body, headers=headers)
        assert resp.status_code == 401
        challenge = resp.headers["www-authenticate"]
        metadata_url = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{metadata_url}"' in challenge
        assert "NO_CREDENTIAL" in challenge  # the reason, in the header and in the body
        assert resp.json()["error"]["data"]["reason"] == "NO_CREDENTIAL"
        metadata = (await http.get(metadata_url)).json()
        assert metadata["resource"] == url
        # the broker is no OAuth authorization server: none is advertised
        assert "authorization_servers" not in metadata
        # a token that is not a credential of this broker is no better than none
        resp = await http.post(
            url, json=body, headers={**headers, "authorization": "Bearer not-a-token"}
        )
        assert resp.status_code == 401
        assert resp.json()["error"]["data"]["reason"] == "MALFORMED_TOKEN"
    async with stack.agent.task("probe") as task, stack.tools(task, "docs") as docs:
        assert await refused(docs.call_with(None, "search_docs", QUERY)) is Reason.NO_CREDENTIAL


async def test_token_for_another_tool_server_or_arguments_is_rejected(stack: Stack) -> None:
    async with stack.agent.task("probe the checks") as task, stack.tools(task, "docs") as docs:
        search = await task.credential("docs", "search_docs", QUERY)
        # another tool of the same server: refused inside the tool call
        reason = await refused(docs.call_with(search.token, "fetch_page", {"path": "x"}))
        assert reason is Reason.TOOL_MISMATCH
        # the right tool with other arguments
        other = await refused(docs.call_with(search.token, "search_docs", {"query": "deploy"}))
        assert other is Reason.ARGS_MISMATCH
        # a credential for another server: refused at the HTTP layer (wrong audience)
        repo_cred = await task.credential("repo", "read_file", {"path": "src/retry.py"})
        reason = await refused(docs.call_with(repo_cred.token, "search_docs", QUERY))
        assert reason is Reason.WRONG_AUDIENCE
        # the mismatches did not use the credential up: the call it was minted for succeeds
        assert "guides/retries.md" in text(await docs.call_with(search.token, "search_docs", QUERY))


async def test_replay_is_rejected(stack: Stack) -> None:
    async with stack.agent.task("replay") as task, stack.tools(task, "docs") as docs:
        cred = await task.credential("docs", "search_docs", QUERY)
        text(await docs.call_with(cred.token, "search_docs", QUERY))
        assert await refused(docs.call_with(cred.token, "search_docs", QUERY)) is Reason.REPLAYED


async def test_end_task_revokes_offline_within_100ms(stack: Stack) -> None:
    verifier = stack.verifier("docs")
    task = await stack.agent.begin_task("end me")
    cred = await task.credential("docs", "search_docs", QUERY)
    claims = await verifier.authenticate(cred.token)  # good before the task ends
    assert claims.task == task.task_id
    started = time.perf_counter()
    await task.end("done")
    rejected: Reason | None = None
    while rejected is None and time.perf_counter() - started < 1.0:
        try:
            await verifier.authenticate(cred.token)
        except Unauthenticated as exc:
            rejected = exc.reason
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    assert rejected is Reason.REVOKED
    print(f"\noffline verifier rejected {elapsed * 1000:.1f} ms after EndTask was called")
    assert elapsed < 0.1
    async with stack.tools(task, "docs") as docs:
        with pytest.raises(Unauthenticated):
            await docs.call_with(cred.token, "search_docs", QUERY)


async def test_feed_cut_longer_than_the_bound_rejects_everything(stack: Stack) -> None:
    verifier = stack.verifier("docs")
    task = await stack.agent.begin_task("outlive the feed")
    creds = [
        await task.credential("docs", "search_docs", QUERY),
        await task.credential("docs", "fetch_page", {"path": "guides/retries.md"}),
    ]
    await verifier.authenticate(creds[0].token)
    stopped = time.perf_counter()
    await stack.running.server.stop(0)  # the feed is cut (so is everything else)
    for _ in range(500):
        if not verifier.fresh():
            break
        await asyncio.sleep(0.01)
    print(f"\nfeed stale {time.perf_counter() - stopped:.2f} s after the broker stopped")
    for cred in creds:
        with pytest.raises(Unauthenticated) as exc:
            await verifier.authenticate(cred.token)
        assert exc.value.reason is Reason.STALE
    with pytest.raises(Unauthenticated) as exc:
        await verifier.verify(creds[1].token, tool="fetch_page", arguments={"path": "x"})
    assert exc.value.reason is Reason.STALE
    # and through MCP: the HTTP layer refuses every request
    async with stack.tools(task, "docs") as docs:
        with pytest.raises(Unauthenticated):
            await docs.call_with(creds[0].token, "search_docs", QUERY)


async def test_tainted_task_cannot_deploy_or_read_a_secret(stack: Stack) -> None:
    secret_args = {"name": "prod/db-password"}
    async with stack.agent.task("update the deploy docs") as task:
        # clean: a tier 2 secret read would be granted (deploy, tier 3, always needs approval)
        await task.credential("secrets", "read_secret", {"name": "ci/registry-token"})
        async with stack.tools(task, "docs") as docs:
            page = text(await docs.call_tool("fetch_page", {"path": "guides/deploy.md"}))
        assert "ignore all previous instructions" not in page  # the hidden comment is gone
        assert "Deploys go through the release pipeline" in page
        record = await stack.running.store.get_task(task.task_id)
        assert record is not None and record.taint is Taint.SUSPECT
        for server, tool, args in (
            ("secrets", "read_secret", secret_args),
            ("deploy", "deploy", {"build": "hotfix-666"}),
        ):
            with pytest.raises(PermissionDenied) as exc:
                await task.credential(server, tool, args)
            assert exc.value.reason is Reason.POLICY_DENIED
            assert "suspect-read-only" in exc.value.policy_ids
        # reading stays possible
        async with stack.tools(task, "repo") as repo:
            text(await repo.call_tool("read_file", {"path": "src/retry.py"}))


async def test_online_mode(pki: Path, fast_heartbeat: None) -> None:
    async for s in open_stack(pki, mode="online"):
        async with s.agent.task("online") as task, s.tools(task, "docs") as docs:
            cred = await task.credential("docs", "search_docs", QUERY)
            assert "guides/retries.md" in text(
                await docs.call_with(cred.token, "search_docs", QUERY)
            )
            assert (
                await refused(docs.call_with(cred.token, "search_docs", QUERY)) is Reason.REPLAYED
            )
            other = await task.credential("docs", "search_docs", QUERY)
            reason = await refused(docs.call_with(other.token, "search_docs", {"query": "x"}))
            assert reason is Reason.ARGS_MISMATCH


async def crashing_agent(stack: Stack) -> tuple[Task, str]:
    async with stack.agent.task("crash midway") as task:
        cred = await task.credential("docs", "search_docs", QUERY)
        with pytest.raises(NotFound) as missing:
            await task.credential("nowhere", "search_docs", QUERY)
        assert missing.value.reason is Reason.UNKNOWN_SERVER
        raise RuntimeError(f"agent crashed in {task.task_id} holding {cred.jti}")
    raise AssertionError("unreachable")


async def test_sdk_task_ends_on_an_exception_and_errors_are_typed(stack: Stack) -> None:
    with pytest.raises(RuntimeError, match="agent crashed") as crash:
        await crashing_agent(stack)
    task_id = str(crash.value).split()[3]
    record = await stack.running.store.get_task(task_id)
    assert record is not None and record.state is TaskState.ENDED
    # the agent's outcome is in the audit trail; the store and the feed keep a fixed reason
    [ended] = [r.body for r in stack.running.sink.records if r.body["event"] == "task.end"]
    assert ended["outcome"] == "failed: RuntimeError" and ended["task"] == task_id
    creds = await stack.running.store.list_credentials(task_id)
    assert len(creds) == 1 and not creds[0].consumed  # minted, never used, now dead
    with pytest.raises(InvalidRequest) as bad:
        await stack.agent.begin_task("")
    assert bad.value.field == "intent"
