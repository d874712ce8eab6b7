"""Issue 4 over real gRPC: broker replicas sharing one real Redis, restarts, and Redis outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker.adapters.store.factory import open_store
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server, reason_of
from tests.redis_procs import RedisProc

pytestmark = pytest.mark.integration

ARGS = {"path": "README.md"}


async def replica(pki: Path, url: str, keys: Path) -> Running:
    return await start_broker(
        pki, store=open_store(url, timeout=0.3), **{"tokens.keys_dir": str(keys)}
    )


@pytest.fixture
def url(redis_server: str, request: pytest.FixtureRequest) -> str:
    sep = "&" if "?" in redis_server else "?"
    return f"{redis_server}{sep}namespace=rep{abs(hash(request.node.nodeid))}"


@pytest.fixture
async def pair(pki: Path, url: str, tmp_path: Path) -> AsyncIterator[tuple[Running, Running]]:
    a = await replica(pki, url, tmp_path / "keys")
    b = await replica(pki, url, tmp_path / "keys")
    try:
        yield a, b
    finally:
        for r in (a, b):
            await r.close()
            await r.store.close()


async def test_two_replicas_agree(pair: tuple[Running, Running]) -> None:
    a, b = pair
    agent_a, agent_b = Agent(a.channel("agent-demo")), Agent(b.channel("agent-demo"))
    repo_a, repo_b = Server(a.channel("mcp-repo")), Server(b.channel("mcp-repo"))
    # mint on A, verify on B
    task = await agent_a.begin()
    token = await agent_a.token(task, "repo", "read_file", ARGS)
    await repo_b.verify(token, "read_file", ARGS)
    # consumed on B: REPLAYED on A
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await repo_a.verify(token, "read_file", ARGS)
    assert reason_of(exc.value) == "REPLAYED"
    # EndTask on B (task begun on A): the next verify on A fails with REVOKED
    live = await agent_a.token(task, "repo", "read_file", ARGS)
    assert await agent_b.end(task) == 1
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await repo_a.verify(live, "read_file", ARGS)
    assert reason_of(exc.value) == "REVOKED"


async def test_rotation_on_one_replica_is_seen_by_the_other(
    pair: tuple[Running, Running],
) -> None:
    a, b = pair
    assert a.broker.keys.active_kid() == b.broker.keys.active_kid()
    new_kid = await a.broker.keyring.rotate(a.clock.now(), 300)
    agent_a = Agent(a.channel("agent-demo"))
    task = await agent_a.begin()
    token = await agent_a.token(task, "repo", "read_file", ARGS)
    # B has not reloaded yet: the unknown kid makes it re-read the shared key ring
    await Server(b.channel("mcp-repo")).verify(token, "read_file", ARGS)
    assert await b.broker.keys.refresh(b.clock.now()) is True  # B re-reads the shared ring
    assert b.broker.keys.active_kid() == new_kid
    kids_a = {k["kid"] for k in a.broker.keyring.public_jwks()}
    assert kids_a == {k["kid"] for k in b.broker.keyring.public_jwks()}


async def test_restart_keeps_tasks_credentials_tombstones_and_keys(
    pki: Path, url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    first = await replica(pki, url, keys)
    agent = Agent(first.channel("agent-demo"))
    live_task, ended_task = await agent.begin(), await agent.begin()
    live_token = await agent.token(live_task, "repo", "read_file", ARGS)
    dead_token = await agent.token(ended_task, "repo", "read_file", ARGS)
    await agent.end(ended_task)
    kid = first.broker.keys.active_kid()
    await first.close()
    await first.store.close()

    second = await replica(pki, url, keys)
    try:
        assert second.broker.keys.active_kid() == kid
        repo = Server(second.channel("mcp-repo"))
        await repo.verify(live_token, "read_file", ARGS)  # the live credential survived
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await repo.verify(dead_token, "read_file", ARGS)
        assert reason_of(exc.value) == "REVOKED"  # so did the tombstone
        again = Agent(second.channel("agent-demo"))
        await again.token(live_task, "repo", "read_file", ARGS)  # and the task
    finally:
        await second.close()
        await second.store.close()


async def test_redis_outage_fails_closed_and_recovers(
    pki: Path, redis_proc: RedisProc, tmp_path: Path
) -> None:
    r = await replica(pki, redis_proc.url + "?namespace=outage", tmp_path / "keys")
    try:
        agent, repo = Agent(r.channel("agent-demo")), Server(r.channel("mcp-repo"))
        task = await agent.begin()
        handed_out: list[str] = []
        redis_proc.pause()
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    handed_out.append(await agent.token(task, "repo", "read_file", ARGS))
                assert time.monotonic() - started < 1.0
                assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
                assert reason_of(exc.value) == "STORE_UNAVAILABLE"
                # the client learns the store is down, not where it is or what redis-py said
                details = exc.value.details() or ""
                assert redis_proc.url.split("//", 1)[1].split("/")[0] not in details
                assert "redis" not in details.lower()
        finally:
            redis_proc.resume()
        assert handed_out == []
        # Redis is back: minting and verifying resume without a restart
        for _ in range(50):
            try:
                token = await agent.token(task, "repo", "read_file", ARGS)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("minting did not resume after Redis came back")
        await repo.verify(token, "read_file", ARGS)
    finally:
        await r.close()
        await r.store.close()
