"""Approvals: a call policy asks an operator about is pending until decided; an approval is good
for exactly one use of exactly that call."""

from __future__ import annotations

import pytest

from broker.app.credentials import Limits
from broker.core.approvals import ApprovalState
from broker.core.audit.record import AuditEventName
from broker.core.errors import FailedPrecondition, NotFound, QuotaExceeded, Reason
from broker.core.model import TaskRecord
from broker.core.requests import Pending

from .conftest import OPERATOR, STRANGER, Harness, make_harness

ARGS = {"build": "1.2.3"}


async def pending(h: Harness, task: TaskRecord, args: dict[str, str] = ARGS) -> Pending:
    got = await h.ask(task, "deploy", "deploy", args, justification="release 1.2.3")
    assert isinstance(got, Pending), got
    return got


async def test_a_tier_3_call_waits_for_an_operator(harness: Harness) -> None:
    task = await harness.task()
    ask = await pending(harness, task)
    [listed] = await harness.admin.list_approvals()
    assert listed.approval_id == ask.approval_id
    assert (listed.tool, listed.justification) == ("deploy", "release 1.2.3")
    [request] = harness.events(AuditEventName.APPROVAL_REQUEST)
    assert request["extra"]["approval_id"] == ask.approval_id
    # asking again for the same call finds the same approval, no second one
    assert (await pending(harness, task)).approval_id == ask.approval_id
    assert len(harness.events(AuditEventName.APPROVAL_REQUEST)) == 1
    # a retry before the decision is still pending
    retry = await harness.ask(task, "deploy", "deploy", ARGS, approval_id=ask.approval_id)
    assert isinstance(retry, Pending) and retry.approval_id == ask.approval_id


async def test_approved_it_gives_one_credential_for_that_call(harness: Harness) -> None:
    task = await harness.task()
    ask = await pending(harness, task)
    await harness.admin.decide_approval(OPERATOR, ask.approval_id, approve=True, reason="ok")
    granted = await harness.grant(task, "deploy", "deploy", ARGS, approval_id=ask.approval_id)
    await harness.verify(granted, "deploy", "deploy", ARGS)
    [used] = await harness.admin.list_approvals(state=ApprovalState.USED)
    assert used.approval_id == ask.approval_id
    [consume] = harness.events(AuditEventName.APPROVAL_CONSUME)
    assert consume["extra"]["approved_by"] == str(OPERATOR.spiffe_id)
    with pytest.raises(FailedPrecondition) as again:  # once only
        await harness.ask(task, "deploy", "deploy", ARGS, approval_id=ask.approval_id)
    assert again.value.reason is Reason.APPROVAL_REQUIRED
    assert "already used" in again.value.message


async def test_an_approval_is_bound_to_the_exact_call(harness: Harness) -> None:
    task = await harness.task()
    ask = await pending(harness, task)
    await harness.admin.decide_approval(OPERATOR, ask.approval_id, approve=True, reason="ok")
    for server, tool, args in (
        ("deploy", "deploy", {"build": "6.6.6"}),  # other arguments
        ("deploy", "rollback", ARGS),  # other tool
    ):
        with pytest.raises(FailedPrecondition) as err:
            await harness.ask(task, server, tool, args, approval_id=ask.approval_id)
        assert err.value.reason is Reason.APPROVAL_REQUIRED
        assert "another call" in err.value.message
    other = await harness.task()  # another task of the same agent
    with pytest.raises(FailedPrecondition):
        await harness.ask(other, "deploy", "deploy", ARGS, approval_id=ask.approval_id)
    assert len(harness.events(AuditEventName.APPROVAL_REJECT)) == 3
    # the mismatches did not burn it: the exact call still gets its credential
    await harness.grant(task, "deploy", "deploy", ARGS, approval_id=ask.approval_id)


async def test_another_agents_approval_is_reported_as_absent(harness: Harness) -> None:
    task = await harness.task()
    ask = await pending(harness, task)
    stranger_task = await harness.task(STRANGER)
    with pytest.raises(NotFound):
        await harness.ask(
            stranger_task, "deploy", "deploy", ARGS, who=STRANGER, approval_id=ask.approval_id
        )


async def test_denied_it_gives_nothing_and_says_who_denied(harness: Harness) -> None:
    task = await harness.task()
    ask = await pending(harness, task)
    await harness.admin.decide_approval(OPERATOR, ask.approval_id, approve=False, reason="freeze")
    with pytest.raises(FailedPrecondition) as err:
        await harness.ask(task, "deploy", "deploy", ARGS, approval_id=ask.approval_id)
    assert err.value.reason is Reason.APPROVAL_REQUIRED
    assert "denied by" in err.value.message and "freeze" in err.value.message
    [decide] = harness.events(AuditEventName.APPROVAL_DECIDE)
    assert (decide["decision"], decide["actor"]) == ("denied", str(OPERATOR.spiffe_id))
    with pytest.raises(FailedPrecondition) as twice:  # decided once only
        await harness.admin.decide_approval(OPERATOR, ask.approval_id, approve=True, reason="x")
    assert twice.value.reason is Reason.APPROVAL_NOT_PENDING


async def test_an_approval_expires_and_no_longer_gives_a_credential() -> None:
    h = make_harness(limits=Limits(approval_ttl=60))
    task = await h.task()
    ask = await pending(h, task)
    await h.admin.decide_approval(OPERATOR, ask.approval_id, approve=True, reason="ok")
    h.clock.advance(61)
    with pytest.raises(FailedPrecondition) as err:
        await h.ask(task, "deploy", "deploy", ARGS, approval_id=ask.approval_id)
    assert err.value.reason is Reason.APPROVAL_REQUIRED


async def test_pending_approvals_per_task_are_capped() -> None:
    h = make_harness(limits=Limits(max_pending_approvals=2))
    task = await h.task()
    await pending(h, task, {"build": "1"})
    await pending(h, task, {"build": "2"})
    with pytest.raises(QuotaExceeded):
        await pending(h, task, {"build": "3"})
