"""Issue 13, "every refusal leaves evidence": refused BeginTasks, refused credential requests
(QUOTA_EXCEEDED included), refused verifications (with task, tool and jti once the signature
verified) and what offline verifiers refused (reported in batches, never the token) are all on
the broker's audit trail. Each assertion failed before: those refusals left no record, or one
naming only the actor and the reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from broker.client.verifier import OfflineVerifier, VerifierSettings
from broker.client.verifier.refusals import NotedRefusal, RefusalBuffer
from broker.core.errors import Unauthenticated
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server, reason_of

pytestmark = pytest.mark.integration

ARGS = {"query": "retry"}


def records(running: Running, event: str) -> list[dict[str, object]]:
    return [r.body for r in running.sink.records if r.body["event"] == event]


async def refused(coro: object) -> str:
    try:
        await coro  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return reason_of(exc)
    raise AssertionError("not refused")


async def test_refusals_at_the_broker_are_recorded(running: Running) -> None:
    agent = Agent(running.channel("agent-demo"))
    docs = Server(running.channel("mcp-docs"))
    parent = await agent.begin(plan=[("docs", "search_docs")])
    # BeginTask: widening the parent's plan, an unknown parent
    assert await refused(agent.begin(parent_task_id=parent, plan=[("repo", "")])) == (
        "OUTSIDE_PLAN"
    )
    assert await refused(agent.begin(parent_task_id="t_" + "A" * 22)) == "TASK_NOT_FOUND"
    begun = records(running, "task.refused")
    assert [r["reason"] for r in begun] == ["OUTSIDE_PLAN", "TASK_NOT_FOUND"]
    assert begun[0].get("task") == parent, begun[0]
    # RequestCredential: a quota (not recorded at all before)
    running.broker.limits = type(running.broker.limits)(
        quotas=type(running.broker.limits.quotas)(per_task=1)
    )
    token = await agent.token(parent, "docs", "search_docs", ARGS)
    assert await refused(agent.credential(parent, "docs", "search_docs", ARGS)) == (
        "QUOTA_EXCEEDED"
    )
    [quota] = records(running, "credential.refused")
    assert (quota["reason"], quota["task"]) == ("QUOTA_EXCEEDED", parent)
    # a refused verification after the signature verified names the task, tool and jti
    assert await refused(docs.verify(token, "fetch_page", ARGS)) == "TOOL_MISMATCH"
    [verify] = records(running, "credential.verify")
    assert verify["reason"] == "TOOL_MISMATCH" and verify["task"] == parent
    assert verify["tool"] == "search_docs" and str(verify["jti"]).startswith(parent)
    assert token not in json.dumps([r.body for r in running.sink.records], default=dict)


async def test_offline_verifiers_report_their_refusals_in_batches(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.app import feed

    monkeypatch.setattr(feed, "HEARTBEAT_SECONDS", 0.1)
    running = await start_broker(pki)
    try:
        v = OfflineVerifier(
            f"127.0.0.1:{running.port}",
            ca=running.pki / "ca.crt",
            cert=running.pki / "mcp-docs.crt",
            key=running.pki / "mcp-docs.key",
            settings=VerifierSettings(stale_after=2.0),
            clock=running.clock,
        )
        await v.start()
        v.report_every = 0.05
        try:
            agent = Agent(running.channel("agent-demo"))
            task = await agent.begin()
            token = await agent.token(task, "docs", "search_docs", ARGS)
            repo_token = await agent.token(task, "repo", "read_file", {"path": "x"})
            for bad in (
                v.verify(token, tool="fetch_page", arguments=ARGS),  # TOOL_MISMATCH
                v.verify(repo_token, tool="read_file", arguments={"path": "x"}),  # WRONG_AUDIENCE
            ):
                with pytest.raises(Unauthenticated):
                    await bad
            await v.verify(token, tool="search_docs", arguments=ARGS)
            with pytest.raises(Unauthenticated):  # REPLAYED
                await v.verify(token, tool="search_docs", arguments=ARGS)
            for _ in range(100):
                if len(records(running, "verifier.refusal")) >= 3:
                    break
                await asyncio.sleep(0.05)
            got = records(running, "verifier.refusal")
            assert [r["reason"] for r in got] == ["TOOL_MISMATCH", "WRONG_AUDIENCE", "REPLAYED"]
            assert got[0]["task"] == task and got[0]["actor"] == "spiffe://dev.local/mcp/docs"
            assert got[2]["extra"]["tool"] == "search_docs"  # type: ignore[index]
            trail = json.dumps([r.body for r in running.sink.records], default=dict)
            assert token not in trail and repo_token not in trail
        finally:
            await v.aclose()
    finally:
        await running.close()


def test_the_refusal_buffer_is_bounded_and_counts_what_it_drops() -> None:
    buffer = RefusalBuffer(capacity=3)
    for i in range(5):
        buffer.note(NotedRefusal(reason="REVOKED", refused_at=float(i)))
    assert len(buffer) == 3 and buffer.dropped == 2
    batch = buffer.take(2)
    assert [r.refused_at for r in batch] == [2.0, 3.0]
    buffer.note(NotedRefusal(reason="REPLAYED", refused_at=9.0))
    buffer.note(NotedRefusal(reason="REPLAYED", refused_at=10.0))
    buffer.put_back(batch)  # a failed send: room for none of them, counted as dropped
    assert len(buffer) == 3 and buffer.dropped == 4
