"""A replica mints from its cached copy of a task (no store read per mint): what another replica
changes meanwhile (the task ended, its taint rose, a kill switch) still decides the next mint,
because the store's record step checks state, taint and blocks, and anything but an allow is
decided again on a fresh read."""

from __future__ import annotations

from typing import Any

import pytest

from broker.app.admin import Admin
from broker.app.audit import Auditor
from broker.app.credentials import Broker
from broker.core.audit.recent import RecentRecords
from broker.core.errors import FailedPrecondition, PermissionDenied, Reason
from broker.core.model import Taint
from broker.core.requests import Granted, Outcome, Pending

from .conftest import AGENT, OPERATOR, Harness, server_peer


def replica(h: Harness) -> tuple[Broker, Admin]:
    """A second broker on the same store, keys, policy and clock (another worker or host)."""
    b = h.broker
    other = Broker(
        issuer=b.issuer,
        policy=b.policy,
        keys=b.keys,
        store=h.store,
        audit=Auditor("other", [h.sink]),
        clock=h.clock,
        limits=b.limits,
    )
    return other, Admin(other, RecentRecords())


def count_task_reads(h: Harness) -> list[str]:
    reads: list[str] = []
    original = h.store.get_task

    async def counted(task_id: str) -> Any:
        reads.append(task_id)
        return await original(task_id)

    h.store.get_task = counted  # type: ignore[method-assign]
    return reads


async def test_the_second_mint_of_a_task_does_not_read_it(harness: Harness) -> None:
    task = await harness.task()
    reads = count_task_reads(harness)
    await harness.grant(task, "docs", "search_docs")
    await harness.grant(task, "docs", "search_docs")
    await harness.grant(task, "repo", "read_file")
    assert reads == [task.task_id]


async def test_a_task_ended_at_another_replica_is_refused_from_the_cache(
    harness: Harness,
) -> None:
    task = await harness.task()
    await harness.grant(task, "docs", "search_docs")  # cached here
    other, _ = replica(harness)
    await other.end_task(AGENT, task.task_id, "done")
    with pytest.raises(FailedPrecondition) as err:
        await harness.ask(task, "docs", "search_docs")
    assert err.value.reason is Reason.TASK_ENDED
    # refused on the task's state, not by policy, also for a call outside its plan
    planned = await harness.task(plan=(("docs", "search_docs"),))
    await harness.grant(planned, "docs", "search_docs")
    await other.end_task(AGENT, planned.task_id, "done")
    with pytest.raises(FailedPrecondition) as err:
        await harness.ask(planned, "repo", "write_file")
    assert err.value.reason is Reason.TASK_ENDED


async def test_a_taint_raised_at_another_replica_decides_the_next_mint(harness: Harness) -> None:
    task = await harness.task()
    page = await harness.grant(task, "docs", "fetch_page")  # cached here while clean
    other, _ = replica(harness)
    outcome = Outcome(jti=page.jti, succeeded=True, findings=(("injection", "ignore all"),))
    assert await other.report_outcome(server_peer("docs"), outcome) is Taint.SUSPECT
    # a suspect task is read-only: decided at the store's taint, not the cached one
    with pytest.raises(PermissionDenied) as err:
        await harness.ask(task, "repo", "write_file")
    assert err.value.reason is Reason.POLICY_DENIED
    got = await harness.ask(task, "repo", "read_file")
    assert isinstance(got, Granted)
    assert harness.claims(got, "repo", "read_file").taint == "suspect"


async def test_a_secret_after_untrusted_content_needs_an_approval_from_the_cache(
    harness: Harness,
) -> None:
    task = await harness.task()
    page = await harness.grant(task, "docs", "fetch_page")
    other, _ = replica(harness)
    await other.report_outcome(server_peer("docs"), Outcome(jti=page.jti, succeeded=True))
    assert isinstance(await harness.ask(task, "secrets", "read_secret"), Pending)


async def test_a_kill_switch_thrown_at_another_replica_refuses_the_next_mint(
    harness: Harness,
) -> None:
    task = await harness.task()
    await harness.grant(task, "docs", "search_docs")
    _, admin = replica(harness)
    await admin.revoke_agent(OPERATOR, "demo", reason="stolen", dry_run=False)
    with pytest.raises((PermissionDenied, FailedPrecondition)) as err:
        await harness.ask(task, "docs", "search_docs")
    assert err.value.reason in (Reason.REVOKED, Reason.TASK_ENDED)
