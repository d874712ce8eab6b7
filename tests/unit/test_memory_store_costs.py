"""The memory store's per-agent caps cost what the live set costs, not the retained one: an
agent that ran thousands of short tasks does not make each new BeginTask or mint walk them all
(it did: 26 ms per BeginTask after 4,500 tasks, measured with bench/revoke_scale.py)."""

from __future__ import annotations

import pytest

from broker.adapters.store.memory import MemoryStore
from broker.core.errors import QuotaExceeded
from broker.core.model import TaskRecord, TaskState
from tests.contract.test_store_contract import NOW, task

CAP = 16


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a task's liveness is looked at."""
    calls = [0]
    is_live = TaskRecord.is_live

    def counting(self: TaskRecord, now: float) -> bool:
        calls[0] += 1
        return is_live(self, now)

    monkeypatch.setattr(TaskRecord, "is_live", counting)
    return calls


async def test_begin_task_does_not_walk_the_agents_ended_tasks(counted: list[int]) -> None:
    store = MemoryStore()
    for _ in range(40 * CAP):  # many short tasks, ended but retained
        t = task()
        await store.create_task(t, retain_until=t.expires_at + 600, max_live_per_agent=CAP)
        await store.end_task(t.task_id, state=TaskState.ENDED, now=NOW, reason="done")
    counted[0] = 0
    t = task()
    await store.create_task(t, retain_until=t.expires_at + 600, max_live_per_agent=CAP)
    assert counted[0] <= CAP  # at most one sweep of the live set, never the 640 retained
    assert len(store._agent_tasks[t.agent]) == 40 * CAP + 1  # they are retained all the same


async def test_the_cap_still_counts_every_live_task(counted: list[int]) -> None:
    store = MemoryStore()
    for _ in range(CAP):
        t = task()
        await store.create_task(t, retain_until=t.expires_at + 600, max_live_per_agent=CAP)
    extra = task()
    with pytest.raises(QuotaExceeded):
        await store.create_task(extra, retain_until=extra.expires_at + 600, max_live_per_agent=CAP)
