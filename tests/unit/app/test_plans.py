"""Plans: what BeginTask declares bounds every credential of the task (and of its sub-tasks)."""

from __future__ import annotations

import pytest

from broker.core.audit.record import AuditEventName
from broker.core.errors import NotFound, PermissionDenied, Reason
from broker.core.model import PlanStep

from .conftest import REGISTRY, Harness

REPO = REGISTRY.server("repo").spiffe_id


async def test_a_plan_names_servers_and_tools_of_the_registry(harness: Harness) -> None:
    task = await harness.task(plan=(("repo", "read_file"), ("docs", "")))
    assert task.plan == (
        PlanStep(REPO, "read_file"),
        PlanStep(REGISTRY.server("docs").spiffe_id, ""),
    )
    with pytest.raises(NotFound) as err:
        await harness.task(plan=(("repo", "read_file"), ("repo", "format_disk")))
    assert err.value.message.startswith("plan[1]")
    assert err.value.reason is Reason.UNKNOWN_TOOL


async def test_a_call_outside_the_plan_is_refused_and_audited(harness: Harness) -> None:
    task = await harness.task(plan=(("repo", "read_file"),))
    await harness.grant(task, "repo", "read_file")
    with pytest.raises(PermissionDenied) as err:
        await harness.ask(task, "repo", "write_file")
    assert err.value.reason is Reason.OUTSIDE_PLAN
    [denied] = [
        e for e in harness.events(AuditEventName.CREDENTIAL_DECISION) if e["decision"] == "deny"
    ]
    assert denied["tool"] == "write_file"
    assert list(denied["policy_ids"]) == ["outside-plan"]


async def test_a_step_without_a_tool_covers_every_tool_of_its_server(harness: Harness) -> None:
    task = await harness.task(plan=(("repo", ""),))
    for tool in REGISTRY.server("repo").tools:
        await harness.grant(task, "repo", tool)
    with pytest.raises(PermissionDenied):
        await harness.ask(task, "docs", "search_docs")


async def test_without_a_plan_policy_alone_decides(harness: Harness) -> None:
    task = await harness.task()
    await harness.grant(task, "repo", "write_file")
    await harness.grant(task, "docs", "fetch_page")


async def test_the_plan_is_checked_once_per_request(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = REGISTRY.server("docs").tools
    steps = (*(("docs", tool) for tool in docs), ("repo", "run_tests"))
    task = await harness.task(plan=steps)
    calls = 0
    covers = PlanStep.covers

    def counting(self: PlanStep, server: str, tool: str) -> bool:
        nonlocal calls
        calls += 1
        return covers(self, server, tool)

    monkeypatch.setattr(PlanStep, "covers", counting)
    await harness.grant(task, "repo", "run_tests")  # the last step: every step is looked at
    assert calls == len(steps)
