"""Issue 13 item 3: kill switches persist. After RevokeAgent / RevokeServer the subject stays
refused (BeginTask, RequestCredential, verification online and offline) until an operator
lifts the block or its duration ends; `broker blocks list|lift` shows and lifts blocks.
Each test failed before the fix (a revoke was one-shot: the agent began a new task a moment
later and its credentials verified)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker.client.verifier import OfflineVerifier, VerifierSettings
from broker.core.errors import Unauthenticated
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server, reason_of
from tests.integration.operator import broker_cli

pytestmark = pytest.mark.integration

ARGS = {"query": "retry"}
DEMO = "spiffe://dev.local/agent/demo"


@pytest.fixture(params=["memory", "redis"])
async def running(
    request: pytest.FixtureRequest, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    from broker.adapters.store.factory import open_store
    from broker.adapters.store.memory import MemoryStore
    from broker.app import feed
    from broker.app.ports import Store

    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    store: Store
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        store = open_store(f"{url}?namespace=ks{uuid.uuid4().hex[:12]}", timeout=3.0)
    else:
        store = MemoryStore()
    r = await start_broker(pki, store=store)
    try:
        yield r
    finally:
        await r.close()
        await store.close()


async def offline(running: Running) -> OfflineVerifier:
    pki = running.pki
    v = OfflineVerifier(
        f"127.0.0.1:{running.port}",
        ca=pki / "ca.crt",
        cert=pki / "mcp-docs.crt",
        key=pki / "mcp-docs.key",
        settings=VerifierSettings(stale_after=2.0),
        clock=running.clock,
    )
    await v.start()
    return v


async def rpc_reason(coro: object) -> str:
    try:
        await coro  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return reason_of(exc)
    return "OK"


async def offline_reason(v: OfflineVerifier, token: str) -> str:
    try:
        await v.verify(token, tool="search_docs", arguments=ARGS)
    except Unauthenticated as exc:
        return exc.reason.value
    return "OK"


async def test_revoked_agent_stays_refused_until_lifted(running: Running) -> None:
    agent = Agent(running.channel("agent-demo"))
    docs = Server(running.channel("mcp-docs"))
    before = await offline(running)
    try:
        task = await agent.begin()
        online_token = await agent.token(task, "docs", "search_docs", ARGS)
        offline_token = await agent.token(task, "docs", "search_docs", ARGS)

        done = await broker_cli(running, "agents", "revoke", "demo", "--reason", "injected")
        assert done.code == 0, done.err
        assert "blocked until lifted" in done.out
        running.clock.advance(2)  # a moment later: new iat, past the floor

        # the same agent: no new task, no credential for its old task
        assert await rpc_reason(agent.begin()) == "REVOKED"
        assert await rpc_reason(agent.credential(task, "docs", "search_docs", ARGS)) in {
            "REVOKED",
            "TASK_ENDED",
        }
        # its tokens: refused online and offline (the verifier that was following, and one
        # that starts after the revoke and gets the blocks in force when it subscribes)
        assert await rpc_reason(docs.verify(online_token, "search_docs", ARGS)) == "REVOKED"
        await asyncio.sleep(0.3)
        assert await offline_reason(before, offline_token) == "REVOKED"
        late = await offline(running)
        try:
            await asyncio.sleep(0.3)
            assert ("agent", DEMO) in late.revocations.blocks
        finally:
            await late.aclose()

        listed = await broker_cli(running, "blocks", "list", "--json")
        assert [(b["kind"], b["subject"], b["blocked"]) for b in listed.json()] == [
            ("agent", DEMO, True)
        ]
        human = await broker_cli(running, "blocks", "list")
        assert "until lifted" in human.out and "injected" in human.out

        lifted = await broker_cli(running, "blocks", "lift", "agent", "demo", "--reason", "fixed")
        assert lifted.code == 0, lifted.err
        assert (await broker_cli(running, "blocks", "list", "--json")).json() == []
        running.clock.advance(2)
        # the agent works again, with new tasks; what was revoked stays revoked
        fresh = await agent.begin()
        token = await agent.token(fresh, "docs", "search_docs", ARGS)
        await asyncio.sleep(0.3)
        assert await offline_reason(before, token) == "OK"
        assert await rpc_reason(agent.credential(task, "docs", "search_docs", ARGS)) == (
            "TASK_ENDED"
        )
        again = await broker_cli(running, "blocks", "lift", "agent", "demo", "--reason", "x")
        assert again.code != 0 and "NOT_FOUND" in again.err
        events = [r.body["event"] for r in running.sink.records]
        assert "revoke.agent" in events and "block.lift" in events
    finally:
        await before.aclose()


async def test_a_block_for_a_duration_ends_by_itself(running: Running) -> None:
    agent = Agent(running.channel("agent-demo"))
    done = await broker_cli(running, "servers", "revoke", "docs", "--for", "10m", "--json")
    assert done.code == 0, done.err
    assert done.json()["block"]["blocked"] is True
    task = await agent.begin()  # the agent is not blocked: only the server is
    assert await rpc_reason(agent.credential(task, "docs", "search_docs", ARGS)) == "REVOKED"
    assert await agent.token(task, "repo", "read_file", {"path": "x"})  # other servers work
    running.clock.advance(601)
    assert await agent.token(task, "docs", "search_docs", ARGS)
