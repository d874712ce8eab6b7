"""Issue 6: per-call approvals, end to end over mTLS, decided with the real `broker` CLI.

A tier-3 call is pending -> approved from the CLI -> a credential for that call only; another
call with the same approval id fails; an expired or denied approval gives no credential.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from broker._proto.broker.v1 import admin_pb2
from tests.integration.conftest import Running, start_broker
from tests.integration.helpers import Agent, Server, reason_of
from tests.integration.operator import admin, broker_cli

pytestmark = pytest.mark.integration

PROD = {"env": "prod", "version": "1.4.2"}
OPERATOR = "spiffe://dev.local/operator/admin"


@pytest.fixture
def agent(running: Running) -> Agent:
    return Agent(running.channel("agent-demo"))


async def pending(agent: Agent, task: str, args: dict[str, str] = PROD) -> str:
    resp = await agent.credential(task, "deploy", "deploy", args, justification="ship 1.4.2")
    assert resp.WhichOneof("result") == "pending_approval", resp
    return str(resp.pending_approval.approval_id)


async def refused(coro: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await coro  # type: ignore[misc]
    return exc.value.code(), reason_of(exc.value), exc.value.details() or ""


async def test_pending_then_approved_from_the_cli_gives_a_credential_for_that_call_only(
    running: Running, agent: Agent
) -> None:
    task = await agent.begin()
    approval_id = await pending(agent, task)
    # asking again (the agent polls) gives the same pending approval, not a new one
    assert await pending(agent, task) == approval_id
    assert (
        await agent.credential(task, "deploy", "deploy", PROD, approval_id=approval_id)
    ).WhichOneof("result") == "pending_approval"

    listed = await broker_cli(running, "approvals", "list", "--json")
    assert listed.code == 0, listed.err
    [shown] = [a for a in listed.json() if a["approval_id"] == approval_id]
    assert (shown["task_id"], shown["tool"], shown["state"]) == (
        task,
        "deploy",
        "APPROVAL_STATE_PENDING",
    )
    assert shown["justification"] == "ship 1.4.2" and "tier 3" in shown["reason"]
    table = await broker_cli(running, "approvals", "list")
    assert approval_id in table.out and "pending" in table.out

    decided = await broker_cli(running, "approvals", "approve", approval_id, "--reason", "CHG-42")
    assert decided.code == 0, decided.err
    assert f"approved {approval_id}" in decided.out and OPERATOR in decided.out

    # another call (other arguments, other tool) with the same approval id: no credential
    other = {"env": "prod", "version": "6.6.6"}
    code, reason, message = await refused(
        agent.credential(task, "deploy", "deploy", other, approval_id=approval_id)
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "APPROVAL_REQUIRED")
    assert "another call" in message
    code, reason, _ = await refused(
        agent.credential(task, "deploy", "rollback", PROD, approval_id=approval_id)
    )
    assert reason == "APPROVAL_REQUIRED"

    # the approved call itself: a credential, good at the deploy server for exactly that call
    resp = await agent.credential(task, "deploy", "deploy", PROD, approval_id=approval_id)
    assert resp.WhichOneof("result") == "credential"
    deploy = Server(running.channel("mcp-deploy"))
    verified = await deploy.verify(resp.credential.token, "deploy", PROD)
    assert (verified.task_id, verified.tool, verified.tier) == (task, "deploy", 3)

    # single use: the same call again with the same id gets nothing
    code, reason, message = await refused(
        agent.credential(task, "deploy", "deploy", PROD, approval_id=approval_id)
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "APPROVAL_REQUIRED")
    assert "already used" in message
    used = await broker_cli(running, "approvals", "list", "--state", "used", "--json")
    assert [a["approval_id"] for a in used.json()] == [approval_id]
    assert used.json()[0]["decided_by"] == OPERATOR

    events = [r.body["event"] for r in running.sink.records]
    for event in ("approval.request", "approval.decide", "approval.consume", "credential.mint"):
        assert event in events
    decide = next(r.body for r in running.sink.records if r.body["event"] == "approval.decide")
    assert (decide["actor"], decide["decision"], decide["reason"]) == (
        OPERATOR,
        "approved",
        "CHG-42",
    )


async def test_a_denied_approval_gives_no_credential(running: Running, agent: Agent) -> None:
    task = await agent.begin()
    approval_id = await pending(agent, task)
    no_reason = await broker_cli(running, "approvals", "deny", approval_id)
    assert no_reason.code == 2 and "--reason" in no_reason.err
    denied = await broker_cli(running, "approvals", "deny", approval_id, "--reason", "not today")
    assert denied.code == 0, denied.err
    code, reason, message = await refused(
        agent.credential(task, "deploy", "deploy", PROD, approval_id=approval_id)
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "APPROVAL_REQUIRED")
    assert "denied by" in message and "not today" in message
    # decided once: approving it now is a conflict (exit 6), naming why
    again = await broker_cli(running, "approvals", "approve", approval_id, "--reason", "oops")
    assert again.code == 6 and "APPROVAL_NOT_PENDING" in again.err
    # a new request for the same call is a new approval
    assert await pending(agent, task) != approval_id


async def test_an_expired_approval_gives_no_credential(running: Running, agent: Agent) -> None:
    task = await agent.begin(ttl_seconds=3600)
    approved = await pending(agent, task)
    assert (await broker_cli(running, "approvals", "approve", approved, "--reason", "ok")).code == 0
    late = await pending(agent, task, {"env": "staging"})
    running.clock.advance(601)  # approvals.ttl_seconds: 600 by default
    code, reason, message = await refused(
        agent.credential(task, "deploy", "deploy", PROD, approval_id=approved)
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "APPROVAL_REQUIRED")
    assert "expired" in message
    # an expired pending approval can no longer be decided either
    result = await broker_cli(running, "approvals", "approve", late, "--reason", "too late")
    assert result.code == 6 and "expired" in result.err
    expired = await broker_cli(running, "approvals", "list", "--state", "expired", "--json")
    assert {a["approval_id"] for a in expired.json()} == {approved, late}


async def test_policy_is_evaluated_again_when_the_approval_is_used(
    running: Running, agent: Agent
) -> None:
    task = await agent.begin()
    approval_id = await pending(agent, task)
    await broker_cli(running, "approvals", "approve", approval_id, "--reason", "ok")
    # meanwhile the task read something a sanitizer flagged: deploy is denied, approved or not
    repo = Server(running.channel("mcp-repo"))
    resp = await agent.credential(task, "repo", "read_file", {"path": "README"})
    await repo.verify(resp.credential.token, "read_file", {"path": "README"})
    await repo.report(resp.credential.jti, findings=("instruction",))
    code, reason, message = await refused(
        agent.credential(task, "deploy", "deploy", PROD, approval_id=approval_id)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "POLICY_DENIED")
    assert "suspect-read-only" in message


async def test_unknown_or_malformed_approval_ids(running: Running, agent: Agent) -> None:
    task = await agent.begin()
    code, reason, _ = await refused(
        agent.credential(task, "deploy", "deploy", PROD, approval_id=f"ap_{task}.{'A' * 22}")
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    missing = await broker_cli(
        running, "approvals", "approve", f"ap_{task}.{'B' * 22}", "--reason", "x"
    )
    assert missing.code == 3, missing.err
    bad = await broker_cli(running, "approvals", "approve", "nope", "--reason", "x")
    assert bad.code == 2 and "approval_id" in bad.err
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await admin(running).DecideApproval(
            admin_pb2.DecideApprovalRequest(approval_id=f"ap_{task}.{'B' * 22}", approve=True),
            timeout=5,
        )
    assert reason_of(exc.value) == "INVALID_REQUEST"  # the reason is required


async def test_approval_ttl_is_configurable(pki: Path) -> None:
    r = await start_broker(pki, **{"approvals.ttl_seconds": 30})
    try:
        agent = Agent(r.channel("agent-demo"))
        task = await agent.begin()
        resp = await agent.credential(task, "deploy", "deploy", PROD)
        left = resp.pending_approval.expires_at.seconds - r.clock.now()
        assert 28 <= left <= 30
    finally:
        await r.close()


async def test_a_failed_mint_does_not_burn_the_approval(pki: Path) -> None:
    """The approval is used up only once the credential is signed and recorded: a retry that
    fails on the task's quota leaves it approved, and the next retry gets the credential."""
    r = await start_broker(pki, **{"quotas.per_task": 1})
    try:
        agent = Agent(r.channel("agent-demo"))
        task = await agent.begin()
        approval_id = await pending(agent, task)
        await admin(r).DecideApproval(
            admin_pb2.DecideApprovalRequest(approval_id=approval_id, approve=True, reason="ok"),
            timeout=5,
        )
        docs_token = await agent.token(task, "docs", "search_docs", {"q": "x"})  # quota full
        code, reason, _ = await refused(
            agent.credential(task, "deploy", "deploy", PROD, approval_id=approval_id)
        )
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        await Server(r.channel("mcp-docs")).verify(docs_token, "search_docs", {"q": "x"})
        resp = await agent.credential(task, "deploy", "deploy", PROD, approval_id=approval_id)
        assert resp.WhichOneof("result") == "credential"
        await Server(r.channel("mcp-deploy")).verify(resp.credential.token, "deploy", PROD)
    finally:
        await r.close()
