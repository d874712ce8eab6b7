"""The revocation feed as verifiers follow it (broker.app.feed): a heartbeat first, then every
event after the cursor, and a clear error for a cursor that is not this feed's."""

from __future__ import annotations

import asyncio

import pytest

from broker.app.feed import HEARTBEAT, follow_revocations
from broker.core.errors import InvalidRequest
from broker.core.model import RevocationEvent, RevocationKind

from .conftest import OPERATOR, Harness


async def take(h: Harness, since: str, n: int) -> list[RevocationEvent]:
    out: list[RevocationEvent] = []
    stream = follow_revocations(h.store, since, clock=h.clock, heartbeat=30)
    try:
        async with asyncio.timeout(2):
            async for event in stream:
                out.append(event)
                if len(out) == n:
                    break
    finally:
        await stream.aclose()
    return out


async def test_a_follower_gets_a_heartbeat_then_the_events_after_its_cursor(
    harness: Harness,
) -> None:
    first = await harness.task()
    await harness.admin.revoke_task(OPERATOR, first.task_id, reason="", dry_run=False)
    [seen] = await harness.feed()
    second = await harness.task()
    await harness.admin.revoke_agent(OPERATOR, "demo", reason="", dry_run=False)

    beat, *events = await take(harness, seen.cursor, 2)

    assert (beat.kind, beat.cursor) == (HEARTBEAT, seen.cursor)
    # the agent's one kill-switch event (issue 13: no walk over its tasks, no event per task)
    assert [(e.kind, e.subject, e.blocked) for e in events] == [
        (RevocationKind.AGENT, second.agent, True),
    ]


async def test_from_now_on_starts_at_the_end_of_the_feed(harness: Harness) -> None:
    task = await harness.task()
    await harness.admin.revoke_task(OPERATOR, task.task_id, reason="", dry_run=False)
    [beat] = await take(harness, "", 1)
    [last] = await harness.feed()
    assert (beat.kind, beat.cursor) == (HEARTBEAT, last.cursor)


@pytest.mark.parametrize("since", ["not-a-cursor", "999"])
async def test_a_cursor_that_is_not_this_feeds_names_since(harness: Harness, since: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        await take(harness, since, 1)
    assert err.value.field == "since"


async def test_a_cursor_of_a_restarted_memory_broker_is_a_reset() -> None:
    """Issue 13 item 9: after a restart (a new in-memory store) an agent quickly publishes
    events, so the old cursor is no longer "ahead of the feed"; its epoch still gives it away."""
    from broker.adapters.store.memory import MemoryStore
    from broker.app.feed import start_cursor

    before = MemoryStore()
    for i in range(3):
        seen = await before.publish_revocation(RevocationKind.TASK, f"t{i}", 1.0, "")
    after = MemoryStore()  # the broker restarted
    for i in range(10):  # more events than the verifier had seen
        await after.publish_revocation(RevocationKind.TASK, f"u{i}", 2.0, "")
    with pytest.raises(InvalidRequest) as err:
        await start_cursor(after, seen.cursor)
    assert err.value.field == "since"
