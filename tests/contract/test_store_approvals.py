"""The store contract for approvals, sub-tasks and live counts (memory, Redis, Redis Cluster)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from broker.app.ports import Quotas, Store
from broker.core.approvals import ApprovalRecord, ApprovalState, binding, new_approval_id
from broker.core.errors import FailedPrecondition, NotFound, QuotaExceeded, Reason
from broker.core.ids import new_task_id
from broker.core.model import TaskRecord, TaskState
from tests.contract.test_store_contract import AGENT, NOW, cred, started, task

DEPLOY = "spiffe://dev.local/mcp/deploy"
OPERATOR = "spiffe://dev.local/operator/admin"


def approval(t: TaskRecord, args: str = "b" * 64, ttl: float = 600) -> ApprovalRecord:
    return ApprovalRecord(
        approval_id=new_approval_id(t.task_id),
        task_id=t.task_id,
        agent=t.agent,
        server=DEPLOY,
        tool="deploy",
        args_sha256=args,
        created_at=NOW,
        expires_at=NOW + ttl,
        reason="tier 3 (production): every call needs an operator's approval",
        policy_ids=("tier3-needs-approval",),
        justification="ship the fix",
        prompt_sha256="c" * 64,
    )


def bind(a: ApprovalRecord) -> str:
    return binding(a.agent, a.task_id, a.server, a.tool, a.args_sha256)


async def test_approval_round_trip(store: Store) -> None:
    t = await started(store)
    a = approval(t)
    assert await store.create_approval(a, now=NOW, max_pending=8) == a
    assert await store.get_approval(a.approval_id) == a
    assert await store.get_approval(new_approval_id(t.task_id)) is None
    assert await store.get_approval("ap_nope") is None
    assert [x.approval_id for x in await store.list_approvals(task_id=t.task_id, now=NOW)] == [
        a.approval_id
    ]
    assert a.approval_id in {x.approval_id for x in await store.list_approvals(now=NOW)}


async def test_same_call_pending_is_not_duplicated(store: Store) -> None:
    t = await started(store)
    first = await store.create_approval(approval(t), now=NOW, max_pending=8)
    again = await store.create_approval(approval(t), now=NOW + 1, max_pending=8)
    assert again.approval_id == first.approval_id
    other = await store.create_approval(approval(t, args="d" * 64), now=NOW, max_pending=8)
    assert other.approval_id != first.approval_id
    # once decided, the same call gets a new approval
    await store.decide_approval(
        first.approval_id, approve=False, decided_by=OPERATOR, reason="no", now=NOW + 2
    )
    fresh = await store.create_approval(approval(t), now=NOW + 3, max_pending=8)
    assert fresh.approval_id != first.approval_id


async def test_pending_approvals_are_capped_per_task(store: Store) -> None:
    t = await started(store)
    for i in range(3):
        await store.create_approval(approval(t, args=f"{i:064x}", ttl=60), now=NOW, max_pending=3)
    with pytest.raises(QuotaExceeded):
        await store.create_approval(approval(t, args="e" * 64), now=NOW, max_pending=3)
    # decided and expired pending approvals do not count
    first = (await store.list_approvals(task_id=t.task_id, now=NOW))[0]
    await store.decide_approval(
        first.approval_id, approve=True, decided_by=OPERATOR, reason="ok", now=NOW
    )
    await store.create_approval(approval(t, args="e" * 64), now=NOW, max_pending=3)
    await store.create_approval(approval(t, args="a" * 64), now=NOW + 61, max_pending=3)


async def test_approval_needs_a_live_task(store: Store) -> None:
    t = await started(store)
    await store.end_task(t.task_id, state=TaskState.ENDED, now=NOW, reason="done")
    with pytest.raises(FailedPrecondition) as exc:
        await store.create_approval(approval(t), now=NOW + 1, max_pending=8)
    assert exc.value.reason is Reason.TASK_ENDED
    with pytest.raises(NotFound):
        await store.create_approval(approval(task()), now=NOW, max_pending=8)


async def test_decide_once(store: Store) -> None:
    t = await started(store)
    a = await store.create_approval(approval(t), now=NOW, max_pending=8)
    changed, got = await store.decide_approval(
        a.approval_id, approve=True, decided_by=OPERATOR, reason="change ticket 42", now=NOW + 5
    )
    assert changed and got is not None
    assert (got.state, got.decided_by, got.decision_reason, got.decided_at) == (
        ApprovalState.APPROVED,
        OPERATOR,
        "change ticket 42",
        NOW + 5,
    )
    assert await store.get_approval(a.approval_id) == got
    changed, again = await store.decide_approval(
        a.approval_id, approve=False, decided_by=OPERATOR, reason="changed my mind", now=NOW + 6
    )
    assert not changed and again == got
    assert await store.decide_approval(
        new_approval_id(t.task_id), approve=True, decided_by=OPERATOR, reason="x", now=NOW
    ) == (False, None)


async def test_an_expired_approval_cannot_be_decided(store: Store) -> None:
    t = await started(store)
    a = await store.create_approval(approval(t, ttl=60), now=NOW, max_pending=8)
    changed, got = await store.decide_approval(
        a.approval_id, approve=True, decided_by=OPERATOR, reason="late", now=NOW + 60
    )
    assert not changed and got is not None and got.state_at(NOW + 60) is ApprovalState.EXPIRED


async def test_consume_is_single_use_and_bound_to_the_call(store: Store) -> None:
    t = await started(store)
    a = await store.create_approval(approval(t), now=NOW, max_pending=8)
    # not approved yet
    assert (await store.consume_approval(a.approval_id, binding=bind(a), now=NOW))[0] is False
    await store.decide_approval(
        a.approval_id, approve=True, decided_by=OPERATOR, reason="ok", now=NOW + 1
    )
    other = bind(approval(t, args="f" * 64))
    changed, got = await store.consume_approval(a.approval_id, binding=other, now=NOW + 2)
    assert not changed and got is not None and got.state is ApprovalState.APPROVED
    results = await asyncio.gather(
        *(store.consume_approval(a.approval_id, binding=bind(a), now=NOW + 3) for _ in range(10))
    )
    assert [ok for ok, _ in results].count(True) == 1
    used = await store.get_approval(a.approval_id)
    assert used is not None and used.state is ApprovalState.USED and used.used_at == NOW + 3
    assert used.decided_by == OPERATOR


async def test_denied_or_expired_approval_is_not_consumed(store: Store) -> None:
    t = await started(store)
    denied = await store.create_approval(approval(t), now=NOW, max_pending=8)
    await store.decide_approval(
        denied.approval_id, approve=False, decided_by=OPERATOR, reason="no", now=NOW
    )
    assert not (await store.consume_approval(denied.approval_id, binding=bind(denied), now=NOW))[0]
    late = await store.create_approval(approval(t, args="9" * 64, ttl=60), now=NOW, max_pending=8)
    await store.decide_approval(
        late.approval_id, approve=True, decided_by=OPERATOR, reason="ok", now=NOW + 1
    )
    changed, got = await store.consume_approval(late.approval_id, binding=bind(late), now=NOW + 60)
    assert not changed and got is not None and got.state_at(NOW + 60) is ApprovalState.EXPIRED


async def test_sub_tasks_and_live_count(store: Store) -> None:
    parent = await started(store)
    kids = {(await started(store, parent=parent.task_id)).task_id for _ in range(2)}
    assert set(await store.list_sub_tasks(parent.task_id)) == kids
    assert list(await store.list_sub_tasks(new_task_id())) == []
    creds = [cred(parent, ttl=ttl) for ttl in (10, 60, 60)]
    for c in creds:
        await store.record_credential(c, quotas=Quotas(), now=NOW)
    assert await store.count_live_credentials(parent.task_id, NOW + 1) == 3
    await store.consume_credential(parent.task_id, creds[1].jti, NOW + 1)
    assert await store.count_live_credentials(parent.task_id, NOW + 1) == 2
    assert await store.count_live_credentials(parent.task_id, NOW + 11) == 1  # one expired
    await store.end_task(parent.task_id, state=TaskState.REVOKED, now=NOW + 12, reason="op")
    assert await store.count_live_credentials(parent.task_id, NOW + 12) == 0
    assert await store.count_live_credentials(new_task_id(), NOW) == 0


async def test_list_approvals_of_every_task(store: Store) -> None:
    t1, t2 = await started(store), await started(store, agent=AGENT + "-2")
    a1 = await store.create_approval(approval(t1), now=NOW, max_pending=8)
    a2 = await store.create_approval(
        replace(approval(t2), created_at=NOW + 1), now=NOW + 1, max_pending=8
    )
    listed = [a.approval_id for a in await store.list_approvals(now=NOW + 2)]
    assert listed.index(a1.approval_id) < listed.index(a2.approval_id)
    assert [a.approval_id for a in await store.list_approvals(task_id=t2.task_id, now=NOW)] == [
        a2.approval_id
    ]


async def test_pending_approvals_are_capped_per_agent(store: Store) -> None:
    """Issue 13 item 7: one agent cannot queue approvals without bound across its tasks."""
    tasks = [await started(store) for _ in range(3)]
    first = await store.create_approval(
        approval(tasks[0]), now=NOW, max_pending=32, max_pending_per_agent=2
    )
    # the same call again is the same approval: it does not count twice
    again = await store.create_approval(
        replace(approval(tasks[0]), approval_id=new_approval_id(tasks[0].task_id)),
        now=NOW,
        max_pending=32,
        max_pending_per_agent=2,
    )
    assert again.approval_id == first.approval_id
    await store.create_approval(
        approval(tasks[1]), now=NOW, max_pending=32, max_pending_per_agent=2
    )
    with pytest.raises(QuotaExceeded):
        await store.create_approval(
            approval(tasks[2]), now=NOW, max_pending=32, max_pending_per_agent=2
        )
    # deciding one frees room
    await store.decide_approval(
        first.approval_id, approve=False, decided_by="op", reason="no", now=NOW + 1
    )
    await store.create_approval(
        approval(tasks[2]), now=NOW + 1, max_pending=32, max_pending_per_agent=2
    )
