"""VerifierService.WatchRevocations: events, heartbeats, resume from a cursor, bad cursors.

Against a real broker (mTLS, port 0) on the in-memory store and on a real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker._proto.broker.v1 import verifier_pb2, verifier_pb2_grpc
from broker.adapters.store.factory import open_store
from broker.adapters.store.memory import MemoryStore
from broker.app import feed
from broker.app.ports import Store
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, reason_of

pytestmark = pytest.mark.integration

HEARTBEAT = verifier_pb2.REVOCATION_KIND_HEARTBEAT
TASK = verifier_pb2.REVOCATION_KIND_TASK


@pytest.fixture(params=["memory", "redis"])
async def running(
    request: pytest.FixtureRequest, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    store: Store
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        store = open_store(f"{url}?namespace=feed{uuid.uuid4().hex[:12]}", timeout=3.0)
    else:
        store = MemoryStore()
    r = await start_broker(pki, store=store)
    try:
        yield r
    finally:
        await r.close()
        await store.close()


def watch(r: Running, since: str = "") -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    stub = verifier_pb2_grpc.VerifierServiceStub(r.channel("mcp-docs"))
    return stub.WatchRevocations(verifier_pb2.WatchRevocationsRequest(since=since), timeout=10)


async def next_event(call: grpc.aio.UnaryStreamCall) -> verifier_pb2.RevocationEvent:  # type: ignore[type-arg]
    """The next message that is not a heartbeat."""
    while True:
        msg = await call.read()
        assert msg is not grpc.aio.EOF
        if msg.kind != HEARTBEAT:
            return msg


async def ended_task(agent: Agent) -> str:
    task = await agent.begin()
    await agent.end(task)
    return task


async def test_events_heartbeats_and_resume(running: Running) -> None:
    agent = Agent(running.channel("agent-demo"))
    call = watch(running)
    first = await call.read()
    assert first.kind == HEARTBEAT  # at once: the feed is live, and here is where it stands
    start = first.cursor
    # idle: heartbeats keep coming, with the same cursor
    beats = [await call.read() for _ in range(3)]
    assert {b.kind for b in beats} == {HEARTBEAT} and {b.cursor for b in beats} == {start}
    t1 = await ended_task(agent)
    e1 = await next_event(call)
    assert (e1.kind, e1.subject) == (TASK, t1)
    assert e1.revoked_at.seconds > 0 and e1.cursor != start
    call.cancel()

    # two more while nobody watches; resuming from e1's cursor delivers exactly those
    t2, t3 = await ended_task(agent), await ended_task(agent)
    resumed = watch(running, since=e1.cursor)
    assert (await resumed.read()).cursor == e1.cursor  # the opening heartbeat
    got = [await next_event(resumed), await next_event(resumed)]
    assert [(e.kind, e.subject) for e in got] == [(TASK, t2), (TASK, t3)]
    # a heartbeat after them carries the last cursor, so a verifier that saw only
    # heartbeats resumes without a gap
    beat = await resumed.read()
    assert beat.kind == HEARTBEAT and beat.cursor == got[-1].cursor
    resumed.cancel()

    # from the start cursor: all three, in order
    again = watch(running, since=start)
    subjects = [(await next_event(again)).subject for _ in range(3)]
    assert subjects == [t1, t2, t3]
    again.cancel()


@pytest.mark.parametrize("since", ["not-a-cursor", "99999999999999999"])
async def test_a_bad_cursor_is_invalid_request_naming_since(running: Running, since: str) -> None:
    call = watch(running, since=since)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call.read()
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(exc.value) == "INVALID_REQUEST"
    assert (exc.value.details() or "").startswith("INVALID_REQUEST: since:")


async def test_only_mcp_servers_may_watch(running: Running) -> None:
    stub = verifier_pb2_grpc.VerifierServiceStub(running.channel("agent-demo"))
    call = stub.WatchRevocations(verifier_pb2.WatchRevocationsRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call.read()
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(exc.value) == "ROLE_NOT_ALLOWED"
