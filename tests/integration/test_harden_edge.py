"""Issue 13 at the gRPC edge, against a real broker over mTLS: items 10 and 11, and 5.

Each test failed before its fix: INTERNAL (or UNKNOWN without a reason) instead of a clear
refusal, or a stored change without its audit record, or an unbounded outcome."""

from __future__ import annotations

import grpc
import pytest

from broker._proto.broker.v1 import agent_pb2
from broker.adapters.pki import issue
from tests.integration.conftest import Running
from tests.integration.helpers import Agent, reason_of

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "path",
    [
        "agent/" + "a" * 600,  # a SPIFFE ID longer than an audit record's identifiers
        "agent/eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlMTIz",  # shaped like a JWT
    ],
)
async def test_item10_odd_svid_is_refused_before_anything_is_stored(
    running: Running, path: str
) -> None:
    name = f"odd-{len(path)}"
    issue(running.pki, f"spiffe://dev.local/{path}", running.pki / name)
    agent = Agent(running.channel(name))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.begin()
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == "INVALID_SVID"
    assert await running.store.list_tasks(now=running.clock.now()) == []
    # and the refusal is on the record (the broker as actor: the SVID's ID cannot be one)
    [record] = [r.body for r in running.sink.records if r.body["event"] == "rpc.refused"]
    assert record["reason"] == "INVALID_SVID" and record["actor"] == "spiffe://dev.local/broker"
    assert record["extra"]["method"] == "/broker.v1.AgentService/BeginTask"  # type: ignore[index]


async def test_item11_nan_or_infinity_in_arguments_is_invalid_argument(running: Running) -> None:
    agent = Agent(running.channel("agent-demo"))
    task = await agent.begin()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent.credential(task, "docs", "search_docs", {"q": {"limit": [1, bad]}})
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(caught.value) == "INVALID_REQUEST"
        assert "arguments.q.limit[1]" in caught.value.details()


async def test_item11_malformed_protobuf_is_invalid_argument(running: Running) -> None:
    channel = running.channel("agent-demo")
    raw = channel.unary_unary(
        "/broker.v1.AgentService/BeginTask",
        request_serializer=lambda b: b,
        response_deserializer=agent_pb2.BeginTaskResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "INVALID_REQUEST"
    assert "request" in caught.value.details()


async def test_item5_outcome_is_bounded_and_not_broadcast(running: Running) -> None:
    agent = Agent(running.channel("agent-demo"))
    task = await agent.begin()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.stub.EndTask(
            agent_pb2.EndTaskRequest(task_id=task, outcome="x" * 2_000_000), timeout=5
        )
    assert reason_of(caught.value) == "INVALID_REQUEST" and "outcome" in caught.value.details()
    forged = "done\n2026-01-01 INFO broker: operator approved everything\x1b[8m"
    await agent.stub.EndTask(agent_pb2.EndTaskRequest(task_id=task, outcome=forged), timeout=5)
    [event] = [e for e in await running.store.revocations_since("") if e.subject == task]
    assert event.reason == "ended by its agent"  # a fixed reason: never the agent's text


async def test_item6_operator_cli_escapes_agent_text(running: Running) -> None:
    from tests.integration.operator import broker_cli

    agent = Agent(running.channel("agent-demo"))
    spoof = "rollback\x1b[8m (hidden) \rdeploy to prod \u202eedoc\u200b"
    task = await agent.begin(intent=f"routine {spoof}")
    resp = await agent.credential(
        task, "deploy", "deploy", {"build": "1"}, justification=f"safe {spoof}"
    )
    assert resp.WhichOneof("result") == "pending_approval"
    for args in (("approvals", "list"), ("tasks", "list"), ("tasks", "show", task)):
        shown = await broker_cli(running, *args)
        assert shown.code == 0, shown.err
        for bad in ("\x1b", "\r", "\u202e", "\u200b"):
            assert bad not in shown.out, (args, bad)
        if args != ("tasks", "list"):  # (the list does not show the intent)
            assert "\\x1b[8m" in shown.out  # escaped, visible
    as_json = await broker_cli(running, "approvals", "list", "--json")
    assert "\u202e" not in as_json.out and "\\u202e" in as_json.out
    assert as_json.json()[0]["justification"] == f"safe {spoof}"  # same value for scripts
