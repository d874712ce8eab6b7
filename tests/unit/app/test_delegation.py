"""Delegation: a sub-agent's task is bounded by its parent's (plan, life, taint, depth)."""

from __future__ import annotations

import pytest

from broker.app.credentials import Limits
from broker.core.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Reason,
    Unauthenticated,
)
from broker.core.model import Taint, TaskState

from .conftest import AGENT, STRANGER, Harness, make_harness


async def test_a_sub_task_narrows_its_parents_plan(harness: Harness) -> None:
    parent = await harness.task(plan=(("repo", ""), ("docs", "search_docs")))
    child = await harness.task(parent_task_id=parent.task_id, plan=(("repo", "read_file"),))
    await harness.grant(child, "repo", "read_file")
    with pytest.raises(PermissionDenied) as err:  # the parent may, the child did not plan it
        await harness.ask(child, "repo", "write_file")
    assert err.value.reason is Reason.OUTSIDE_PLAN


async def test_a_sub_task_cannot_widen_its_parents_plan(harness: Harness) -> None:
    parent = await harness.task(plan=(("docs", "search_docs"),))
    for plan in ((("repo", "read_file"),), (("docs", ""),), (("docs", "fetch_page"),)):
        with pytest.raises(PermissionDenied) as err:
            await harness.task(parent_task_id=parent.task_id, plan=plan)
        assert err.value.reason is Reason.OUTSIDE_PLAN
        assert "plan[0]" in err.value.message


async def test_a_sub_task_without_a_plan_inherits_its_parents(harness: Harness) -> None:
    parent = await harness.task(plan=(("docs", ""),))
    child = await harness.task(parent_task_id=parent.task_id)
    assert child.plan == parent.plan
    with pytest.raises(PermissionDenied):
        await harness.ask(child, "repo", "read_file")


async def test_a_sub_task_lives_no_longer_than_its_parent_and_records_the_chain(
    harness: Harness,
) -> None:
    parent = await harness.task(ttl_seconds=60)
    child = await harness.task(parent_task_id=parent.task_id, ttl_seconds=3600)
    assert child.expires_at == parent.expires_at
    assert (child.depth, child.act) == (1, (parent.agent,))
    granted = await harness.grant(child, "repo", "read_file")
    claims = harness.claims(granted, "repo", "read_file")
    assert claims.actors == (parent.agent,)  # RFC 8693 act: who delegated


async def test_delegation_depth_is_capped() -> None:
    h = make_harness(limits=Limits(max_delegation_depth=1))
    root = await h.task()
    child = await h.task(parent_task_id=root.task_id)
    with pytest.raises(PermissionDenied) as err:
        await h.task(parent_task_id=child.task_id)
    assert err.value.reason is Reason.POLICY_DENIED
    assert "depth 2" in err.value.message


async def test_a_sub_task_inherits_its_parents_taint(harness: Harness) -> None:
    parent = await harness.task()
    await harness.store.raise_taint(parent.task_id, Taint.UNTRUSTED)
    child = await harness.task(parent_task_id=parent.task_id)
    assert child.taint is Taint.UNTRUSTED


async def test_delegating_does_not_lend_the_parents_identity(harness: Harness) -> None:
    # the parent names the stranger as its delegate (issue 13: delegation needs consent)
    parent = await harness.task(delegates=(str(STRANGER.spiffe_id),))
    child = await harness.task(STRANGER, parent_task_id=parent.task_id)
    with pytest.raises(PermissionDenied) as err:  # the stranger is still not in the registry
        await harness.ask(child, "docs", "search_docs", who=STRANGER)
    assert "base-registered-agents-only" in err.value.policy_ids


async def test_ending_a_task_ends_its_sub_tasks(harness: Harness) -> None:
    parent = await harness.task()
    child = await harness.task(parent_task_id=parent.task_id)
    granted = await harness.grant(child, "repo", "read_file")
    await harness.broker.end_task(AGENT, parent.task_id, "done")
    stored = await harness.store.get_task(child.task_id)
    assert stored is not None and stored.state is not TaskState.ACTIVE
    with pytest.raises(FailedPrecondition) as err:
        await harness.ask(child, "repo", "read_file")
    assert err.value.reason is Reason.TASK_ENDED
    with pytest.raises(Unauthenticated) as revoked:
        await harness.verify(granted, "repo", "read_file")
    assert revoked.value.reason is Reason.REVOKED


async def test_another_agents_task_is_reported_as_absent(harness: Harness) -> None:
    task = await harness.task()
    with pytest.raises(NotFound) as err:
        await harness.ask(task, "docs", "search_docs", who=STRANGER)
    assert err.value.reason is Reason.TASK_NOT_FOUND
    with pytest.raises(NotFound):
        await harness.broker.end_task(STRANGER, task.task_id, "")
