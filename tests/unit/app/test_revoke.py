"""Operator revokes by task, agent, server, tier and "issued before": what each ends, what a dry
run reports without changing anything, and what offline verifiers are told.

Since issue 13 a revoke by agent, server, tier or time is one kill-switch record (O(1)), not a
walk over the tasks: the operator's view (``Admin.list_tasks``) shows the tasks it revoked."""

from __future__ import annotations

import pytest

from broker.app.admin import RevokeResult
from broker.core.audit.record import AuditEventName
from broker.core.errors import (
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from broker.core.model import RevocationKind, TaskRecord, TaskState

from .conftest import OPERATOR, REGISTRY, STRANGER, Harness


async def live(h: Harness, task: TaskRecord) -> bool:
    """As an operator sees it (kill switches' floors included)."""
    views = await h.admin.list_tasks(limit=1000)
    return any(v.task.task_id == task.task_id and v.state is TaskState.ACTIVE for v in views)


async def test_a_dry_run_reports_the_scope_and_changes_nothing(harness: Harness) -> None:
    task = await harness.task()
    child = await harness.task(parent_task_id=task.task_id)
    granted = await harness.grant(child, "repo", "read_file")
    await harness.grant(task, "docs", "search_docs")
    feed_before = await harness.feed()

    dry = await harness.admin.revoke_task(OPERATOR, task.task_id, reason="", dry_run=True)

    assert dry == RevokeResult(True, tuple(sorted((task.task_id, child.task_id))), 2)
    assert await live(harness, task) and await live(harness, child)
    assert await harness.feed() == feed_before
    await harness.verify(granted, "repo", "read_file")
    [record] = harness.events(AuditEventName.REVOKE_TASK)
    assert record["extra"]["dry_run"] is True and record["extra"]["live_credentials"] == 2


async def test_revoking_a_task_ends_it_and_its_sub_tasks(harness: Harness) -> None:
    task = await harness.task()
    child = await harness.task(parent_task_id=task.task_id)
    granted = await harness.grant(child, "repo", "read_file")
    other = await harness.task()

    done = await harness.admin.revoke_task(OPERATOR, task.task_id, reason="leak", dry_run=False)

    assert done == RevokeResult(False, tuple(sorted((task.task_id, child.task_id))), 1)
    assert not await live(harness, task) and not await live(harness, child)
    assert await live(harness, other)
    with pytest.raises(Unauthenticated):
        await harness.verify(granted, "repo", "read_file")
    with pytest.raises(FailedPrecondition):
        await harness.ask(task, "repo", "read_file")
    tasks = {e.subject for e in await harness.feed() if e.kind == RevocationKind.TASK}
    assert tasks == {task.task_id, child.task_id}  # one event per task, no floor event
    assert {e.kind for e in await harness.feed()} == {RevocationKind.TASK}
    records = harness.events(AuditEventName.REVOKE_TASK)
    assert {r["task"] for r in records} == tasks
    assert all(r["reason"] == "leak" for r in records)


async def test_revoking_an_agent_ends_its_tasks_only_and_sets_a_floor(harness: Harness) -> None:
    mine = await harness.task()
    theirs = await harness.task(STRANGER)
    result = await harness.admin.revoke_agent(OPERATOR, "demo", reason="stolen", dry_run=False)
    assert result.task_ids == () and result.block is not None
    assert (result.block.subject, result.block.blocked) == (mine.agent, True)
    assert await live(harness, theirs) and not await live(harness, mine)
    [floor] = [e for e in await harness.feed() if e.kind == RevocationKind.AGENT]
    assert (floor.subject, floor.revoked_at) == (mine.agent, harness.clock.now())
    assert floor.blocked
    assert harness.events(AuditEventName.REVOKE_AGENT)[0]["reason"] == "stolen"


async def test_revoking_a_server_revokes_its_credentials_and_blocks_it(
    harness: Harness,
) -> None:
    used_repo = await harness.task()
    granted = await harness.grant(used_repo, "repo", "read_file")
    used_docs = await harness.task()
    await harness.grant(used_docs, "docs", "search_docs")
    result = await harness.admin.revoke_server(OPERATOR, "repo", reason="", dry_run=False)
    assert result.task_ids == () and result.block is not None
    assert await live(harness, used_docs) and await live(harness, used_repo)
    with pytest.raises(Unauthenticated):
        await harness.verify(granted, "repo", "read_file")
    with pytest.raises(PermissionDenied):  # blocked until lifted
        await harness.ask(used_repo, "repo", "read_file")
    await harness.grant(used_repo, "docs", "search_docs")  # other servers: unaffected
    [floor] = [e for e in await harness.feed() if e.kind == RevocationKind.SERVER]
    assert floor.subject == REGISTRY.server("repo").spiffe_id
    [record] = harness.events(AuditEventName.REVOKE_SERVER)
    assert record["server"] == floor.subject
    assert record["reason"] == f"revoked by {OPERATOR.spiffe_id}"  # the default reason


async def test_revoking_a_tier_revokes_and_blocks_its_servers(harness: Harness) -> None:
    tier2 = await harness.task()
    granted = await harness.grant(tier2, "secrets", "read_secret")
    tier1 = await harness.task()
    await harness.grant(tier1, "repo", "read_file")
    result = await harness.admin.revoke_tier(OPERATOR, 2, reason="", dry_run=False)
    assert result.task_ids == () and result.block is not None
    assert await live(harness, tier1)
    with pytest.raises(Unauthenticated):
        await harness.verify(granted, "secrets", "read_secret")
    [floor] = [e for e in await harness.feed() if e.kind == RevocationKind.TIER]
    assert floor.subject == "2"
    with pytest.raises(InvalidRequest):
        await harness.admin.revoke_tier(OPERATOR, 7, reason="", dry_run=True)


async def test_revoking_issued_before_ends_older_tasks_only(harness: Harness) -> None:
    old = await harness.task()
    harness.clock.advance(10)
    cut = harness.clock.now()
    harness.clock.advance(10)
    new = await harness.task()
    result = await harness.admin.revoke_issued_before(OPERATOR, cut, reason="", dry_run=False)
    assert result.block is not None and not result.block.blocked  # a floor only
    assert await live(harness, new) and not await live(harness, old)
    [floor] = [e for e in await harness.feed() if e.kind == RevocationKind.ISSUED_BEFORE]
    assert (floor.subject, floor.revoked_at) == ("*", cut)
    [record] = harness.events(AuditEventName.REVOKE_ISSUED_BEFORE)
    assert record["extra"]["issued_before"] == cut
    future = harness.clock.now() + 60
    with pytest.raises(InvalidRequest) as err:
        await harness.admin.revoke_issued_before(OPERATOR, future, reason="", dry_run=True)
    assert err.value.field == "issued_before"


async def test_scopes_that_name_nothing_are_refused(harness: Harness) -> None:
    with pytest.raises(NotFound):
        await harness.admin.revoke_task(OPERATOR, "t_" + "A" * 22, reason="", dry_run=True)
    with pytest.raises(NotFound):
        await harness.admin.revoke_server(OPERATOR, "nosuch", reason="", dry_run=True)
    with pytest.raises(InvalidRequest):
        await harness.admin.revoke_agent(OPERATOR, "", reason="", dry_run=True)


@pytest.mark.parametrize("dry_run", [True, False])
async def test_every_revoke_is_audited_dry_or_not(harness: Harness, dry_run: bool) -> None:
    await harness.task()
    await harness.admin.revoke_agent(OPERATOR, "demo", reason="r", dry_run=dry_run)
    [record] = harness.events(AuditEventName.REVOKE_AGENT)
    assert record["extra"]["dry_run"] is dry_run
    assert record["actor"] == str(OPERATOR.spiffe_id)
    views = await harness.admin.list_tasks(limit=10)
    ended = [v for v in views if v.state is TaskState.REVOKED]
    assert len(ended) == (0 if dry_run else 1)
