"""Quotas on live credentials, per task and per agent: a refused request hands out nothing, and
a credential stops counting once used or expired."""

from __future__ import annotations

import pytest

from broker.app.credentials import Limits
from broker.app.ports import Quotas
from broker.core.audit.record import AuditEventName
from broker.core.errors import QuotaExceeded, Reason
from broker.core.registry import tier_ttl_cap

from .conftest import make_harness


async def test_live_credentials_per_task_are_capped_until_used_or_expired() -> None:
    h = make_harness(limits=Limits(quotas=Quotas(per_task=2)))
    task = await h.task()
    first = await h.grant(task, "repo", "read_file", {"path": "a"})
    await h.grant(task, "repo", "read_file", {"path": "b"})
    with pytest.raises(QuotaExceeded) as err:
        await h.ask(task, "repo", "read_file", {"path": "c"})
    assert err.value.reason is Reason.QUOTA_EXCEEDED
    assert "limit 2" in err.value.message
    assert len(await h.store.list_credentials(task.task_id)) == 2  # nothing recorded
    assert len(h.events(AuditEventName.CREDENTIAL_MINT)) == 2  # nor handed out

    await h.verify(first, "repo", "read_file", {"path": "a"})  # used: no longer live
    await h.grant(task, "repo", "read_file", {"path": "c"})
    with pytest.raises(QuotaExceeded):
        await h.ask(task, "repo", "read_file", {"path": "d"})

    h.clock.advance(tier_ttl_cap(1) + 1)  # every credential so far has expired
    await h.grant(task, "repo", "read_file", {"path": "d"})
    await h.grant(task, "repo", "read_file", {"path": "e"})


async def test_live_credentials_per_agent_are_capped_across_its_tasks() -> None:
    h = make_harness(limits=Limits(quotas=Quotas(per_task=10, per_agent=2)))
    one, two = await h.task(), await h.task()
    await h.grant(one, "docs", "search_docs")
    await h.grant(two, "docs", "search_docs")
    with pytest.raises(QuotaExceeded) as err:
        await h.ask(await h.task(), "docs", "search_docs")
    assert "agent" in err.value.message
    h.clock.advance(tier_ttl_cap(0) + 1)
    await h.grant(one, "docs", "search_docs")
