"""AgentService.PreviewTools and AgentService.RaiseTaint, over real gRPC with real certificates:
what the gateway relies on to list only grantable tools and to taint tasks for unguarded servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker._proto.broker.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from broker.core.canonical import args_sha256
from tests.integration.conftest import Running, start_broker
from tests.support.gateway import ensure_identity, write_registry

pytestmark = pytest.mark.integration

ALLOW = agent_pb2.PREVIEW_DECISION_ALLOW
APPROVAL = agent_pb2.PREVIEW_DECISION_APPROVAL
DENY = agent_pb2.PREVIEW_DECISION_DENY


@pytest.fixture
async def running(pki: Path, tmp_path: Path) -> AsyncIterator[Running]:
    ensure_identity(pki, "agent-other")
    r = await start_broker(pki, registry=str(write_registry(tmp_path)))
    try:
        yield r
    finally:
        await r.close()


def agent(running: Running, name: str = "agent-demo") -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(running.channel(name))  # type: ignore[no-untyped-call]


async def begin(stub: agent_pb2_grpc.AgentServiceStub, **kw: object) -> str:
    resp = await stub.BeginTask(agent_pb2.BeginTaskRequest(intent="preview things", **kw))  # type: ignore[arg-type]
    return str(resp.task_id)


def steps(*pairs: tuple[str, str]) -> list[common_pb2.PlannedStep]:
    return [common_pb2.PlannedStep(server=s, tool=t) for s, t in pairs]


async def preview(
    stub: agent_pb2_grpc.AgentServiceStub, task_id: str, *pairs: tuple[str, str]
) -> agent_pb2.PreviewToolsResponse:
    return await stub.PreviewTools(
        agent_pb2.PreviewToolsRequest(task_id=task_id, tools=steps(*pairs))
    )


async def test_preview_follows_policy_and_taint_without_minting(running: Running) -> None:
    stub = agent(running)
    task_id = await begin(stub)
    pairs = [
        ("files", "read_text_file"),
        ("files", "write_file"),
        ("deploy", "deploy"),
        ("everything", "toggle-simulated-logging"),
        ("nowhere", "x"),
    ]
    clean = await preview(stub, task_id, *pairs)
    assert clean.taint == common_pb2.TAINT_CLEAN
    assert [d.decision for d in clean.decisions] == [ALLOW, ALLOW, APPROVAL, DENY, DENY]
    assert clean.decisions[2].policy_ids == ["tier3-needs-approval"]
    assert [d.reason for d in clean.decisions[3:]] == ["UNKNOWN_TOOL", "UNKNOWN_SERVER"]
    # Nothing was minted and no approval was asked for.
    listed = await running.store.list_credentials(task_id)
    assert listed == []
    suspect = await stub.RaiseTaint(
        agent_pb2.RaiseTaintRequest(
            task_id=task_id,
            server="everything",
            findings=[common_pb2.Finding(kind="instruction", detail="ignore all previous")],
        )
    )
    assert suspect.taint == common_pb2.TAINT_SUSPECT
    after = await preview(stub, task_id, *pairs[:2])
    assert after.taint == common_pb2.TAINT_SUSPECT
    assert [d.decision for d in after.decisions] == [ALLOW, DENY]
    assert after.decisions[1].reason == "POLICY_DENIED"
    assert "suspect-read-only" in after.decisions[1].policy_ids
    assert any("only read tools" in r for r in after.decisions[1].reasons)
    events = [r.body["event"] for r in running.sink.records]
    assert "task.preview" in events and "taint.raise" in events


async def test_preview_honours_the_plan(running: Running) -> None:
    stub = agent(running)
    task_id = await begin(stub, plan=steps(("files", "read_text_file")))
    resp = await preview(stub, task_id, ("files", "read_text_file"), ("files", "write_file"))
    assert [d.decision for d in resp.decisions] == [ALLOW, DENY]
    assert resp.decisions[1].reason == "OUTSIDE_PLAN"


async def test_raise_taint_never_lowers_and_uses_up_the_credential(running: Running) -> None:
    stub = agent(running)
    task_id = await begin(stub)
    cred = await stub.RequestCredential(
        agent_pb2.RequestCredentialRequest(
            task_id=task_id, server="ops", tool="get-sum", args_sha256=args_sha256({})
        )
    )
    assert cred.WhichOneof("result") == "pending_approval"  # tier 3
    granted = await stub.RequestCredential(
        agent_pb2.RequestCredentialRequest(
            task_id=task_id, server="everything", tool="echo", args_sha256=args_sha256({})
        )
    )
    jti = granted.credential.jti
    untrusted = await stub.RaiseTaint(
        agent_pb2.RaiseTaintRequest(task_id=task_id, server="everything", jti=jti)
    )
    assert untrusted.taint == common_pb2.TAINT_UNTRUSTED  # everything's content is untrusted
    record = await running.store.get_credential(task_id, jti)
    assert record is not None and record.consumed
    # A trusted server, no findings, a lower floor: the taint stays where it is.
    same = await stub.RaiseTaint(
        agent_pb2.RaiseTaintRequest(task_id=task_id, server="files", taint=common_pb2.TAINT_CLEAN)
    )
    assert same.taint == common_pb2.TAINT_UNTRUSTED
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub.RaiseTaint(agent_pb2.RaiseTaintRequest(task_id=task_id, server="files", jti=jti))
    assert (wrong.value.details() or "").startswith("NOT_FOUND")


async def test_another_agents_task_is_absent(running: Running) -> None:
    task_id = await begin(agent(running))
    other = agent(running, "agent-other")
    for call in (
        other.PreviewTools(
            agent_pb2.PreviewToolsRequest(task_id=task_id, tools=steps(("files", "write_file")))
        ),
        other.RaiseTaint(agent_pb2.RaiseTaintRequest(task_id=task_id, server="files")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        assert (refused.value.details() or "").startswith("TASK_NOT_FOUND")
    # Only agents may call them.
    operator = agent_pb2_grpc.AgentServiceStub(running.channel("operator-admin"))  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as role:
        await operator.PreviewTools(agent_pb2.PreviewToolsRequest(task_id=task_id))
    assert role.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_raise_taint_with_a_floor_alone(running: Running) -> None:
    """How a gateway carries a long session's taint into the task that replaces its first."""
    stub = agent(running)
    task_id = await begin(stub)
    raised = await stub.RaiseTaint(
        agent_pb2.RaiseTaintRequest(task_id=task_id, taint=common_pb2.TAINT_SUSPECT)
    )
    assert raised.taint == common_pb2.TAINT_SUSPECT
    for bad, field in (
        (agent_pb2.RaiseTaintRequest(task_id=task_id), "taint"),
        (agent_pb2.RaiseTaintRequest(task_id=task_id, jti="x", taint=1), "server"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RaiseTaint(bad)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in (refused.value.details() or "")
